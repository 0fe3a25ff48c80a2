//! Members on the Credentials screen: the member keys a project's backend signs
//! member assertions with (add one, or let the console make a P-256 pair and
//! show its private key once; revoke), and ending every session of a member.
//! Each goes through the admin API's code path (`admin::member_keys`,
//! `admin::members`).

use std::sync::Arc;

use axum::{
    Form,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use maud::{Markup, html};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde::Deserialize;
use tengine_control::member_keys::MemberKey;
use uuid::Uuid;

use super::{
    ConsoleError, PAGE_MAX,
    auth::Session,
    credentials::{self, Forms},
    layout, projects,
};
use crate::{
    AppState,
    admin::{
        error::ApiError,
        member_keys::{add_key, remove_key},
        members::revoke_member,
    },
};

/// The member-key form as sent, with the server's message for a field.
#[derive(Default)]
pub struct KeyForm {
    kid: String,
    public_key: String,
    problem: Option<(String, String)>,
}

/// The member form as sent, with the server's message.
#[derive(Default)]
pub struct MemberForm {
    member_id: String,
    problem: Option<String>,
    /// The member whose sessions were just ended.
    done: Option<String>,
}

/// The members part of the Credentials screen.
pub fn section(session: &Session, project_id: Uuid, keys: &[MemberKey], forms: &Forms) -> Markup {
    let root = format!("{}/projects/{project_id}", session.base);
    let key = &forms.member_key;
    let member = &forms.member;
    let key_problem = |field: &str| {
        key.problem
            .as_ref()
            .filter(|(f, _)| f == field)
            .map(|(_, m)| m.as_str())
    };
    html! {
        h2 { "Member keys" }
        p { "Public keys your backend signs member assertions with (ES256)." }
        @if keys.is_empty() { p { "No member keys." } }
        @else {
            table {
                thead { tr { th scope="col" { "Key id (kid)" } th scope="col" { "Added" }
                    @if !session.read_only() { th scope="col" { "Revoke" } } } }
                tbody {
                    @for k in keys.iter().take(PAGE_MAX) {
                        tr {
                            th scope="row" { code { (k.kid) } }
                            td { (k.created_at.format("%Y-%m-%d %H:%M UTC")) }
                            @if !session.read_only() {
                                td {
                                    form method="post" action=(format!("{root}/member-keys/revoke")) {
                                        input type="hidden" name="csrf" value=(session.csrf);
                                        input type="hidden" name="kid" value=(k.kid);
                                        button type="submit" aria-label=(format!("Revoke member key {}", k.kid)) { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if !session.read_only() {
            h3 { "New member key" }
            form method="post" action=(format!("{root}/member-keys")) {
                input type="hidden" name="csrf" value=(session.csrf);
                p {
                    label for="kid" { "Key id (kid)" }
                    input id="kid" name="kid" maxlength="128" value=(key.kid)
                        aria-invalid=[key_problem("kid").map(|_| "true")]
                        aria-describedby=[key_problem("kid").map(|_| "kid-problem")];
                    @if let Some(m) = key_problem("kid") { span.problem id="kid-problem" role="alert" { "kid: " (m) } }
                }
                p {
                    label for="public_key" { "Public key (SPKI PEM; empty: the console makes a key pair and shows its private key once)" }
                    textarea id="public_key" name="public_key" rows="5" cols="64"
                        aria-invalid=[key_problem("public_key").map(|_| "true")]
                        aria-describedby=[key_problem("public_key").map(|_| "public_key-problem")] { (key.public_key) }
                    @if let Some(m) = key_problem("public_key") {
                        span.problem id="public_key-problem" role="alert" { "public_key: " (m) }
                    }
                }
                p { button type="submit" { "Add member key" } }
            }
            h2 { "Members" }
            @if let Some(done) = &member.done { p role="status" { "Every session of " code { (done) } " issued up to now has ended." } }
            form method="post" action=(format!("{root}/members/revoke")) {
                input type="hidden" name="csrf" value=(session.csrf);
                p {
                    label for="member_id" { "Member id" }
                    input id="member_id" name="member_id" value=(member.member_id)
                        aria-invalid=[member.problem.as_ref().map(|_| "true")]
                        aria-describedby=[member.problem.as_ref().map(|_| "member_id-problem")];
                    @if let Some(m) = &member.problem { span.problem id="member_id-problem" role="alert" { "member_id: " (m) } }
                }
                p { button type="submit" { "End the member's sessions" } }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct NewKeyForm {
    csrf: Option<String>,
    #[serde(default)]
    kid: String,
    #[serde(default)]
    public_key: String,
}

/// A field error as (field, message), or the error page for anything else.
fn field_problem(err: ApiError) -> Result<(u16, String, String), ConsoleError> {
    match err.field() {
        Some(field) => Ok((err.status().as_u16(), field.to_string(), err.message().to_string())),
        None => Err(err.into()),
    }
}

/// `POST /console/projects/{id}/member-keys`: adds the key sent, or makes a pair.
pub async fn add(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
    Form(form): Form<NewKeyForm>,
) -> Result<Response, ConsoleError> {
    session.check_change(form.csrf.as_deref())?;
    let project = projects::find(&st, project_id).await?;
    let kid = form.kid.trim().to_string();
    let (public_key, private_key) = if form.public_key.trim().is_empty() {
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let private = secret
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|_| ConsoleError::new(StatusCode::INTERNAL_SERVER_ERROR, "could not encode a key pair"))?;
        let public = secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|_| ConsoleError::new(StatusCode::INTERNAL_SERVER_ERROR, "could not encode a key pair"))?;
        (public, Some(private.to_string()))
    } else {
        (form.public_key.trim().to_string(), None)
    };
    let added = match add_key(&st, project_id, &kid, &public_key).await {
        Ok(added) => added,
        Err(err) => {
            let (status, field, message) = field_problem(err)?;
            let forms = Forms {
                member_key: KeyForm {
                    kid,
                    public_key: form.public_key,
                    problem: Some((field, message)),
                },
                ..Forms::default()
            };
            return credentials::render_with(&st, &session, project_id, &forms, status).await;
        }
    };
    tracing::info!(project = %project_id, kid = %added.kid, generated = private_key.is_some(), "console: member key added");
    let back = format!("{}/projects/{project_id}/credentials", session.base);
    let Some(private_key) = private_key else {
        return Ok((StatusCode::SEE_OTHER, [(header::LOCATION, back)]).into_response());
    };
    let body = html! {
        h2 { "Member key " code { (added.kid) } " added" }
        p role="status" { strong { "Store this private key in your backend now: it is shown once and Tengine keeps only the public key." } }
        pre tabindex="0" aria-label="The private key" { code id="new-private-key" { (private_key) } }
        p { a href=(back) { "Back to credentials" } }
    };
    Ok(layout::project_page(&session, &project, "Credentials", body))
}

#[derive(Deserialize)]
pub struct KidForm {
    csrf: Option<String>,
    #[serde(default)]
    kid: String,
}

/// `POST /console/projects/{id}/member-keys/revoke`: new assertions signed with it are refused.
pub async fn revoke(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
    Form(form): Form<KidForm>,
) -> Result<Response, ConsoleError> {
    session.check_change(form.csrf.as_deref())?;
    remove_key(&st, project_id, &form.kid).await?;
    tracing::info!(project = %project_id, kid = %form.kid, "console: member key revoked");
    let back = format!("{}/projects/{project_id}/credentials", session.base);
    Ok((StatusCode::SEE_OTHER, [(header::LOCATION, back)]).into_response())
}

#[derive(Deserialize)]
pub struct RevokeMemberForm {
    csrf: Option<String>,
    #[serde(default)]
    member_id: String,
}

/// `POST /console/projects/{id}/members/revoke`: ends every session of the member issued up to now.
pub async fn revoke_sessions(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
    Form(form): Form<RevokeMemberForm>,
) -> Result<Response, ConsoleError> {
    session.check_change(form.csrf.as_deref())?;
    let member = form.member_id.trim().to_string();
    let (status, member_form) = match revoke_member(&st, project_id, &member).await {
        Ok(()) => {
            tracing::info!(project = %project_id, "console: member sessions revoked");
            (
                200,
                MemberForm {
                    done: Some(member),
                    ..MemberForm::default()
                },
            )
        }
        Err(err) => {
            let (status, _, message) = field_problem(err)?;
            (
                status,
                MemberForm {
                    member_id: form.member_id,
                    problem: Some(message),
                    done: None,
                },
            )
        }
    };
    let forms = Forms {
        member: member_form,
        ..Forms::default()
    };
    credentials::render_with(&st, &session, project_id, &forms, status).await
}
