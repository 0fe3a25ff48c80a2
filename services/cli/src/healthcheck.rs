//! `tengine healthcheck URL`: the container image has no curl, so its HEALTHCHECK
//! (and compose's, and anyone's) asks the binary itself. Exit 0 on a 2xx answer
//! within the timeout, 1 on anything else (another status, no answer, a bad URL).

use std::time::Duration;

/// One GET; `Ok(true)` for a 2xx. The proxy settings of the environment are ignored:
/// the probed address is the container's own.
pub async fn probe(url: &str, timeout: Duration) -> anyhow::Result<bool> {
    let client = reqwest::Client::builder().no_proxy().timeout(timeout).build()?;
    let response = client.get(url).send().await?;
    let status = response.status();
    eprintln!("{url}: {status}");
    Ok(status.is_success())
}

/// The process's exit code for `probe`'s result.
pub async fn run(url: &str, timeout: Duration) -> i32 {
    match probe(url, timeout).await {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(err) => {
            eprintln!("{url}: {err:#}");
            1
        }
    }
}
