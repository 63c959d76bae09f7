//! A subscriber that loses nothing: follows every outcome of a server (or of several, failing
//! over between them), prints each one, and acknowledges it once printed.
//!
//! ```text
//! cargo run -p sdmp-client --example tail -- 127.0.0.1:6502 [more addresses]
//! ```
//!
//! The transaction is persisted (PS `example-tail`) and sequenced (XS): stop the program, or the
//! server, and start it again: it resumes after the last outcome it acknowledged. Stop it for
//! good, forgetting the transaction on the server, with `--end` as the first argument.

use std::process::ExitCode;

use sdmp_client::{Event, ResumeOptions, ResumingSubscription, Servers, Subscribe, WireForm};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut addrs: Vec<String> = std::env::args().skip(1).collect();
    let end = addrs.first().is_some_and(|first| first == "--end");
    if end {
        addrs.remove(0);
    }
    if addrs.is_empty() {
        addrs.push("127.0.0.1:6502".into());
    }
    match tail(addrs, end).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tail: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn tail(addrs: Vec<String>, end: bool) -> Result<(), sdmp_client::Error> {
    let servers = Servers::new(addrs, WireForm::Bits8)?;
    let subscribe = Subscribe {
        success: true,
        failure: true,
        management: true,
        persist: Some("example-tail".into()),
        sequenced: true,
        ..Subscribe::new("example-tail")
    };
    let mut outcomes = ResumingSubscription::new(servers, subscribe, ResumeOptions::default())?;
    if end {
        outcomes.end().await?;
    }
    while let Some(event) = outcomes.next().await? {
        match event {
            Event::Outcome(outcome) => {
                let text = |value: &[u8]| String::from_utf8_lossy(value).into_owned();
                println!(
                    "XS {}  {}  SI {}  RE {}",
                    outcome.xs.unwrap_or_default(),
                    text(&outcome.cn),
                    text(&outcome.si),
                    outcome.re
                );
                // Printed, so processed: from here on no crash brings this one back.
                if let Some(xs) = outcome.xs {
                    outcomes.acknowledge(xs).await?;
                }
            }
            Event::Gap(gap) => println!(
                "outcomes XS {} to {} were removed by retention before they reached us",
                gap.first, gap.last
            ),
            Event::Finished { .. } => println!("the transaction ended"),
            Event::Refused(er) => eprintln!("refused: {er}"),
            _ => {}
        }
    }
    Ok(())
}
