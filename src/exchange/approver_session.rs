//! The approval pages' humans, free of HTTP: signing in through
//! `[approvals] login_issuer` ([`crate::identity::login`]), the sessions
//! that follow (in the store, so sign-out ends one on every replica), and
//! which approvals a signed-in human may see. `routes::approvals` parses
//! the request, calls one function here and renders its outcome; the
//! decision itself is [`super::approval::decide`].
//!
//! What this owns: a sign-in attempt is used once and only by the browser
//! that started it (no login CSRF); the ID token is validated by the login
//! issuer's verifier; the MFA rule ([`super::approval::mfa_ok`]) holds
//! before any session exists; a refused sign-in is audited (never the
//! token); every sign-in gets a NEW session id (no fixation) and ends the
//! old one; the only place to go after signing in is an approval id (a
//! UUID), never a caller-chosen URL.

use serde::{Deserialize, Serialize};

use super::approval;
use super::Exchanger;
use crate::audit::{AuditRecord, Auditor, Event};
use crate::identity::login::{self, Human, LoginClient, LoginError};
use crate::store::{Approval, ApprovalState, Stores};

/// How long a sign-in attempt may take at the IdP.
pub const LOGIN_TTL_SECS: u64 = 600;
/// Store namespaces.
const NS_LOGIN: &str = "approvals-login";
const NS_SESSION: &str = "approvals-session";

/// A stored sign-in attempt (keyed by `state`).
#[derive(Debug, Serialize, Deserialize)]
struct LoginAttempt {
    nonce: String,
    verifier: String,
    /// SHA-256 of the browser-binding secret.
    browser: String,
    /// An approval id to show after sign-in (a UUID), else the list.
    then: Option<String>,
}

/// A signed-in human's session (stored under the SHA-256 of its id).
#[derive(Debug, Serialize, Deserialize)]
pub struct Session {
    /// Who signed in.
    pub human: Human,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    /// When it ends (Unix seconds).
    pub expires_at: u64,
}

/// The store, the identity provider or the randomness source failed:
/// nothing changed, try again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the store or the identity provider is unavailable")]
pub struct Unavailable;

/// A sign-in started: send the browser to `url`, and give it `browser`
/// (the secret that binds the attempt to it) to bring back.
#[derive(Debug)]
pub struct SignInStarted {
    /// The IdP's authorization URL.
    pub url: reqwest::Url,
    /// The browser-binding secret (only its hash is stored).
    pub browser: String,
}

/// A finished sign-in: a new session.
#[derive(Debug)]
pub struct SignedIn {
    /// The new session's id (the cookie value; only its hash is stored).
    pub session_id: String,
    /// How long it lives (seconds).
    pub ttl: u64,
    /// The approval (a UUID) that asked for the sign-in, if any.
    pub then: Option<String>,
}

/// Why a sign-in did not start a session. Every refusal but
/// [`SignInRefusal::Expired`] and [`SignInRefusal::Unavailable`] is audited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignInRefusal {
    /// No such attempt: it expired or was already used.
    #[error("the sign-in has expired or was already used")]
    Expired,
    /// The answer came back to another browser than the one that started it.
    #[error("the sign-in was started in another browser")]
    OtherBrowser,
    /// The IdP refused to exchange the code.
    #[error("the identity provider refused the sign-in")]
    CodeRefused,
    /// The ID token is not acceptable.
    #[error("the identity provider's answer is not acceptable")]
    IdTokenRefused,
    /// The human (named) signed in without a second factor, and
    /// `require_mfa` is on.
    #[error("{0} signed in without a second factor")]
    MfaRequired(String),
    /// The store, the IdP or randomness failed.
    #[error("{0}")]
    Unavailable(#[from] Unavailable),
}

/// What the approval pages' humans work with: the stores, the audit trail,
/// the configuration snapshot in force and its login client, and the time
/// of the request.
pub struct ApproverSessions<'a> {
    /// The stores (sessions and sign-in attempts, approvals).
    pub stores: &'a Stores,
    /// The audit trail (refused sign-ins).
    pub auditor: &'a Auditor,
    /// The approval rules of the configuration in force (approvers, MFA
    /// and freshness).
    pub rules: approval::Rules<'a>,
    /// The pipeline of that configuration (the login issuer's verifier).
    pub exchanger: &'a Exchanger,
    /// The sign-in client (`[approvals] login_issuer`).
    pub login: &'a LoginClient,
    /// Now (Unix seconds).
    pub now: u64,
}

impl ApproverSessions<'_> {
    /// Starts a sign-in at the IdP: stores a one-time attempt (its `state`,
    /// `nonce`, PKCE verifier and the hash of a new browser-binding
    /// secret) for [`LOGIN_TTL_SECS`]. `then` is kept only when it is an
    /// approval id (a UUID); `reauth` asks the IdP to authenticate again
    /// (`max_age=0`).
    pub async fn begin_sign_in(
        &self,
        redirect_uri: &str,
        then: Option<&str>,
        reauth: bool,
    ) -> Result<SignInStarted, Unavailable> {
        let then = then
            .filter(|id| uuid::Uuid::parse_str(id).is_ok())
            .map(str::to_string);
        let max_age = reauth.then_some(0);
        let (state, nonce, verifier, browser) = match (
            login::random_token(32),
            login::random_token(32),
            login::random_token(32),
            login::random_token(32),
        ) {
            (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
            _ => return Err(Unavailable),
        };
        let url = self
            .login
            .authorization_url(redirect_uri, &state, &nonce, &verifier, max_age)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "approval pages: IdP discovery failed");
                Unavailable
            })?;
        let attempt = LoginAttempt {
            nonce,
            verifier,
            browser: login::sha256_hex(&browser),
            then,
        };
        let text = serde_json::to_string(&attempt).map_err(|_| Unavailable)?;
        let now = self.now;
        if let Err(e) = self
            .stores
            .sessions
            .put_session(NS_LOGIN, &state, &text, now + LOGIN_TTL_SECS, now)
            .await
        {
            tracing::warn!(error = %e, "approval pages: cannot store the sign-in attempt");
            return Err(Unavailable);
        }
        Ok(SignInStarted { url, browser })
    }

    /// Finishes a sign-in with the IdP's `code` and `state`: takes the
    /// attempt (once only), checks that `browser` (the binding secret the
    /// browser brought back) is the one that started it, exchanges the
    /// code, validates the ID token with the login issuer's verifier,
    /// applies the MFA rule, ends the `old` session if any and starts a new
    /// one. Refusals are audited (not an expired attempt).
    pub async fn finish_sign_in(
        &self,
        redirect_uri: &str,
        code: &str,
        state: &str,
        browser: Option<&str>,
        old: Option<&str>,
    ) -> Result<SignedIn, SignInRefusal> {
        let now = self.now;
        // Once only: a replayed callback finds nothing.
        let attempt = match self
            .stores
            .sessions
            .take_session(NS_LOGIN, state, now)
            .await
        {
            Ok(Some(t)) => {
                serde_json::from_str::<LoginAttempt>(&t).map_err(|_| SignInRefusal::Expired)?
            }
            Ok(None) => return Err(SignInRefusal::Expired),
            Err(_) => return Err(Unavailable.into()),
        };
        // The browser that comes back must be the one that started it (no
        // login CSRF: an attacker's code cannot sign a victim in).
        let same_browser = browser
            .is_some_and(|b| login::constant_time_eq(&login::sha256_hex(b), &attempt.browser));
        if !same_browser {
            self.audit_refused("login_not_bound", None, "callback from another browser")
                .await;
            return Err(SignInRefusal::OtherBrowser);
        }
        let id_token = match self
            .login
            .exchange_code(code, redirect_uri, &attempt.verifier)
            .await
        {
            Ok(t) => t,
            Err(LoginError::Unavailable(e)) => {
                tracing::warn!(error = %e, "approval pages: code exchange failed");
                return Err(Unavailable.into());
            }
            Err(LoginError::Rejected(r)) => {
                self.audit_refused(r, None, "code exchange refused").await;
                return Err(SignInRefusal::CodeRefused);
            }
        };
        let Some(verifier) = self
            .exchanger
            .issuers()
            .find(|v| v.config().name == self.login.config().issuer_name)
        else {
            return Err(Unavailable.into());
        };
        let human = match self
            .login
            .validate_id_token(verifier, &id_token, &attempt.nonce, now)
            .await
        {
            Ok(h) => h,
            Err(LoginError::Unavailable(e)) => {
                tracing::warn!(error = %e, "approval pages: IdP keys unavailable");
                return Err(Unavailable.into());
            }
            Err(LoginError::Rejected(r)) => {
                self.audit_refused(r, None, "ID token refused").await;
                return Err(SignInRefusal::IdTokenRefused);
            }
        };
        if !approval::mfa_ok(&self.rules, &human.amr) {
            self.audit_refused("mfa_required", Some(&human), "no multi-factor amr")
                .await;
            return Err(SignInRefusal::MfaRequired(human.name));
        }
        // An old auth_time may look but not decide: deciding asks for a new
        // sign-in with max_age (approval::may_decide owns that rule).
        // A new session id at every sign-in (no fixation); any old one ends.
        if let Some(old) = old {
            let _ = self
                .stores
                .sessions
                .delete_session(NS_SESSION, &login::sha256_hex(old))
                .await;
        }
        let (Ok(sid), Ok(csrf)) = (login::random_token(32), login::random_token(32)) else {
            return Err(Unavailable.into());
        };
        let ttl = self.login.config().session_ttl.as_secs();
        let s = Session {
            human,
            csrf,
            expires_at: now + ttl,
        };
        let text = serde_json::to_string(&s).map_err(|_| Unavailable)?;
        let key = login::sha256_hex(&sid);
        if let Err(e) = self
            .stores
            .sessions
            .put_session(NS_SESSION, &key, &text, s.expires_at, now)
            .await
        {
            tracing::warn!(error = %e, "approval pages: cannot store the session");
            return Err(Unavailable.into());
        }
        tracing::info!(approver = %s.human.name, idp = %s.human.idp, session = %&key[..16], "approver signed in");
        Ok(SignedIn {
            session_id: sid,
            ttl,
            then: attempt.then,
        })
    }

    /// Audits a refused sign-in (never the token; the human's name when
    /// known).
    async fn audit_refused(&self, reason: &str, h: Option<&Human>, note: &str) {
        let mut rec = AuditRecord::new(Event::Refused).reason(reason);
        if let Some(h) = h {
            rec = rec.client(&h.name).detail(&format!(
                "approval pages sign-in by {} via IdP {} (amr {}): {note}",
                h.name,
                h.idp,
                h.amr.join(",")
            ));
        } else {
            rec = rec.detail(&format!("approval pages sign-in: {note}"));
        }
        if let Err(e) = self.auditor.record(rec).await {
            tracing::error!(error = %e, "approval pages: refused sign-in not audited");
        }
    }

    /// The live session whose id is `id`, if any.
    pub async fn session(&self, id: &str) -> Result<Option<Session>, Unavailable> {
        match self
            .stores
            .sessions
            .get_session(NS_SESSION, &login::sha256_hex(id), self.now)
            .await
        {
            Ok(Some(text)) => Ok(serde_json::from_str::<Session>(&text)
                .ok()
                .filter(|s| s.expires_at > self.now)),
            Ok(None) => Ok(None),
            Err(e) => {
                tracing::warn!(error = %e, "approval pages: session store unavailable");
                Err(Unavailable)
            }
        }
    }

    /// Ends session `id` in the store (on every replica).
    pub async fn sign_out(&self, id: &str) -> Result<(), Unavailable> {
        self.stores
            .sessions
            .delete_session(NS_SESSION, &login::sha256_hex(id))
            .await
            .map_err(|_| Unavailable)
    }

    /// The approvals waiting for `human`'s decision: pending, not expired,
    /// and naming them among their approvers
    /// ([`approval::is_approver`]).
    pub async fn pending_for(&self, human: &Human) -> Result<Vec<Approval>, Unavailable> {
        let now = self.now;
        let all = self
            .stores
            .approvals
            .list_approvals(now)
            .await
            .map_err(|_| Unavailable)?;
        Ok(all
            .into_iter()
            .filter(|a| a.state == ApprovalState::Pending && a.expires_at > now)
            .filter(|a| approval::is_approver(&self.rules, human, a))
            .collect())
    }

    /// Approval `id` if `human` is among its approvers (in any state);
    /// `None` for anyone else, and for an id that is not a UUID.
    pub async fn approval_for(
        &self,
        human: &Human,
        id: &str,
    ) -> Result<Option<Approval>, Unavailable> {
        if uuid::Uuid::parse_str(id).is_err() {
            return Ok(None);
        }
        match self.stores.approvals.get_approval(id, self.now).await {
            Ok(Some(a)) if approval::is_approver(&self.rules, human, &a) => Ok(Some(a)),
            Ok(_) => Ok(None),
            Err(_) => Err(Unavailable),
        }
    }

    /// Whether `human` signed in recently enough to decide now
    /// ([`approval::fresh_enough`]).
    pub fn may_decide_now(&self, human: &Human) -> bool {
        approval::fresh_enough(&self.rules, human.auth_time, self.now)
    }

    /// The scopes of `a` its policy's `approval_scopes` name (why it needs a
    /// human); empty when the anomaly guard asked instead, or the policy is
    /// gone.
    pub fn approval_scopes<'a>(&self, a: &'a Approval) -> Vec<&'a str> {
        self.rules
            .policies
            .iter()
            .find(|p| p.name == a.policy)
            .map(|p| {
                a.scopes
                    .iter()
                    .filter(|s| {
                        p.approval_scopes.iter().any(|pat| {
                            crate::policy::glob::Pattern::parse(pat).is_ok_and(|g| g.matches(s))
                        })
                    })
                    .map(String::as_str)
                    .collect()
            })
            .unwrap_or_default()
    }
}
