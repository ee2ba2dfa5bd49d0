//! Getting a ticket from WeChat: with the app's access_token, and once more
//! with a new token when WeChat says the token is no good.

use std::time::{Duration, Instant};

use http::Method;

use crate::engine::cell::{Issued, Noun};
use crate::forward::body::ProxyBody;
use crate::forward::query::encode;
use crate::token::{RefreshError, Token, TokenManager};
use crate::wechat::is_token_error;
use crate::wechat::{self, FetchError};

use super::{Kind, TicketError};

/// Fetches `kind` with the app's token; a token error makes the token engine
/// replace the token (single-flight, its own limits) and the fetch is tried
/// once more. Each attempt is bounded by `timeout`. The ticket's life
/// counts from before the token was asked for.
pub async fn fetch(
    tokens: &std::sync::Arc<TokenManager>,
    kind: Kind,
    timeout: Duration,
) -> Result<Issued, TicketError> {
    let sent_at = Instant::now();
    let failed = |error| TicketError::Failed {
        noun: Noun::Ticket,
        error,
    };
    let no_token = |token| TicketError::NoToken {
        noun: Noun::Ticket,
        token: Box::new(token),
    };
    let token = tokens.token().await.map_err(no_token)?;
    let path = kind.endpoint().0;
    let (value, expires_in) = match fetch_with(tokens, &token, kind, timeout).await {
        Err(refused @ FetchError::Refused { errcode, .. })
            if is_token_error(tokens.app().kind, errcode) =>
        {
            let fresh = match tokens.replace(&token, path).await {
                Ok(fresh) => fresh,
                // The ticket endpoint refuses every token: WeChat's answer.
                Err(RefreshError::RejectedByOneApi | RefreshError::NotRenewed) => {
                    return Err(failed(refused))
                }
                Err(e) => return Err(no_token(e)),
            };
            fetch_with(tokens, &fresh, kind, timeout)
                .await
                .map_err(failed)?
        }
        outcome => outcome.map_err(failed)?,
    };
    Ok(Issued {
        value,
        expires_in,
        sent_at,
    })
}

/// The ticket and the life WeChat stated (7200 even for a ticket issued
/// long ago).
async fn fetch_with(
    tokens: &TokenManager,
    token: &Token,
    kind: Kind,
    timeout: Duration,
) -> Result<(String, Duration), FetchError> {
    let app = tokens.app();
    let (path, kind_query) = kind.endpoint();
    let uri = format!(
        "{}{path}?{kind_query}access_token={}",
        app.base_url,
        encode(token.value())
    );
    let request = wechat::request()
        .method(Method::GET)
        .uri(uri)
        .body(ProxyBody::empty())
        .map_err(|_| FetchError::BadAnswer("the request could not be built".into()))?;
    let client = tokens.client();
    let answer = match tokio::time::timeout(timeout, wechat::exchange(client, request)).await {
        Ok(answer) => answer?,
        Err(_) => return Err(FetchError::Timeout(timeout)),
    };
    let ticket = answer.get("ticket").and_then(serde_json::Value::as_str);
    let expires_in = answer.get("expires_in").and_then(serde_json::Value::as_u64);
    match (ticket, expires_in) {
        (Some(ticket), Some(secs)) if !ticket.is_empty() => {
            // A token WeChat accepted is good, whatever the status page said.
            tokens.accepted(token, path);
            Ok((ticket.to_owned(), wechat::lifetime(secs)?))
        }
        _ => Err(FetchError::BadAnswer("no ticket or expires_in".into())),
    }
}
