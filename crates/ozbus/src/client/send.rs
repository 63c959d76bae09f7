//! `ozbus send`: sends SDMP frames and prints every frame the server sends back.
//!
//! Owns: reading frames (from the command line, or one per line of standard input), writing them
//! on one connection (to the first of the `--addr` list that answers, over TLS with `--tls`,
//! authenticated first with `--user`), and printing each received frame as one line of text
//! until `--wait` seconds after the last frame went out. It counts what it sent, what it
//! received, and how many of the received frames were ER, so that a script can stop on the
//! first rejected message.
//!
//! Never: checks or rewrites what it sends. It is the tool for talking to a server by hand, so a
//! faulty frame goes out as typed and the server's ER is the answer. Nor does it fail over once
//! connected: frames already sent may have taken effect, and sending them again elsewhere could
//! repeat them.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures::{FutureExt, SinkExt, StreamExt};
use sdmp::{Frame, WireForm};
use sdmp_client::{codec, codes, frame_bytes, frame_code, frame_text, MAX_FRAME};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_util::codec::FramedRead;

use super::Access;

/// Send SDMP frames and print every frame received, one per line.
#[derive(clap::Args, Debug, Clone)]
pub struct SendArgs {
    #[command(flatten)]
    pub server: super::ServerArgs,
    /// Seconds to keep printing replies after the last frame was sent.
    #[arg(long, default_value = "1")]
    pub wait: f64,
    /// Frames to send; none: one frame per line of standard input.
    pub frames: Vec<String>,
}

/// What one `send` run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendOutcome {
    /// Frames written to the server.
    pub sent: usize,
    /// Frames received from the server (every one was printed).
    pub received: usize,
    /// How many of the received frames were ER.
    pub errors: usize,
}

/// Sends the frames of `args` (or, when there are none, the lines of standard input) and prints
/// every received frame to `out`, one per line.
pub async fn run(args: SendArgs, out: &mut (dyn Write + Send)) -> anyhow::Result<SendOutcome> {
    if args.frames.is_empty() {
        // The password (if asked for) is read before the frames start to be.
        let access = args.server.access(false)?;
        send(args, access, stdin(), out).await
    } else {
        // Arguments go through the same splitting as standard input, so an argument holding
        // several lines (`ozbus send "$(cat frames.txt)"`) sends one frame per line.
        let input = args.frames.join("\n").into_bytes();
        run_with_input(args, std::io::Cursor::new(input), out).await
    }
}

/// Standard input as an async reader, read by a detached thread.
///
/// Not `tokio::io::stdin()`: its blocking read cannot be cancelled, so a runtime shutting down
/// (after the server closed the connection, say) would wait for the user to press Enter. A
/// detached thread blocked in `read` simply ends with the process.
fn stdin() -> tokio::io::DuplexStream {
    let (mut pipe, reader) = tokio::io::duplex(64 * 1024);
    let runtime = tokio::runtime::Handle::current();
    let spawned = std::thread::Builder::new()
        .name("ozbus-send-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!("reading standard input: {e}");
                        break;
                    }
                };
                // An error means the reading side is gone: nobody wants the rest.
                if runtime.block_on(pipe.write_all(&buf[..n])).is_err() {
                    break;
                }
            }
            // Dropping the pipe is the end of input.
        });
    if let Err(e) = spawned {
        // No thread, no input: the reader sees an empty input (the pipe's writer is gone).
        tracing::warn!("cannot read standard input: {e}");
    }
    reader
}

/// [`run`] with the frames read from `input` instead of `args.frames` or standard input: frames
/// end at NUL, CR LF, or LF (the same rule the server applies), empty ones are skipped, and the
/// last one may lack its terminator. Bytes are sent as read: on the 8-bit form byte-exact, on
/// UTF-16 transcoded from UTF-8 (or Windows-1252 where a value is not UTF-8).
pub async fn run_with_input<R>(
    args: SendArgs,
    input: R,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<SendOutcome>
where
    R: AsyncRead + Unpin + Send,
{
    let access = args.server.access(true)?;
    send(args, access, input, out).await
}

/// [`run_with_input`] with the server's settings (and password) already read.
async fn send<R>(
    args: SendArgs,
    access: Access,
    input: R,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<SendOutcome>
where
    R: AsyncRead + Unpin + Send,
{
    let wait = Duration::try_from_secs_f64(args.wait).map_err(|_| {
        anyhow!(
            "--wait must be a number of seconds, 0 or more (got {})",
            args.wait
        )
    })?;
    let mut servers = access.servers(&args.server.addr)?;
    let (mut replies, mut sink) = access.connect(&mut servers).await?.split();
    // The server's own framing rule, applied to the input; any frame size a server could accept.
    let mut frames = FramedRead::new(input, codec(WireForm::Bits8));

    let sent = AtomicUsize::new(0);
    let input_done = AtomicBool::new(false);
    let (done_tx, done_rx) = oneshot::channel::<()>();

    let writer = async {
        let result: anyhow::Result<()> = async {
            loop {
                // Take every frame the input already holds before flushing, so a piped file
                // goes out in large writes; flush as soon as the input has to be waited for, so
                // a person typing sees each frame sent at once.
                let next = match frames.next().now_or_never() {
                    Some(next) => next,
                    None => {
                        SinkExt::<&[u8]>::flush(&mut sink)
                            .await
                            .context("sending to the server")?;
                        frames.next().await
                    }
                };
                let Some(frame) = next else { break };
                match frame.context("reading the frames to send")? {
                    Frame::Message(bytes) => {
                        sink.feed(&bytes).await.context("sending to the server")?;
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Frame::Oversize { .. } | Frame::InvalidUtf16 { .. } => {
                        bail!("an input frame is longer than {MAX_FRAME} bytes")
                    }
                }
            }
            SinkExt::<&[u8]>::flush(&mut sink)
                .await
                .context("sending to the server")?;
            input_done.store(true, Ordering::Relaxed);
            Ok(())
        }
        .await;
        // The reply deadline starts now, whether sending ended normally or not.
        let _ = done_tx.send(());
        result
    };

    let reader = async {
        let mut received = 0usize;
        let mut errors = 0usize;
        let deadline = async {
            // An Err only means the writer was dropped, which cannot happen while we run; treat
            // it like the end of input rather than waiting forever.
            let _ = done_rx.await;
            tokio::time::sleep(wait).await;
        };
        tokio::pin!(deadline);
        loop {
            // Not biased: a server that never stops talking must not keep us past the deadline.
            tokio::select! {
                item = replies.next() => match item {
                    Some(Ok(frame)) => {
                        received += 1;
                        if frame_code(frame_bytes(&frame)) == Some(codes::ER) {
                            errors += 1;
                        }
                        writeln!(out, "{}", frame_text(&frame)).context("writing the output")?;
                        out.flush().context("writing the output")?;
                    }
                    Some(Err(e)) => return Err(anyhow::Error::new(e).context("reading from the server")),
                    None => return Ok((received, errors, true)),
                },
                () = &mut deadline => return Ok((received, errors, false)),
            }
        }
    };

    tokio::pin!(writer, reader);
    let (written, read) = tokio::select! {
        read = &mut reader => (None, read),
        written = &mut writer => (Some(written), (&mut reader).await),
    };
    let (received, errors, closed) = read?;
    if let Some(written) = written {
        written?;
    }
    let sent = sent.load(Ordering::Relaxed);
    if closed && !input_done.load(Ordering::Relaxed) {
        bail!("the server closed the connection after {sent} frames were sent");
    }
    Ok(SendOutcome {
        sent,
        received,
        errors,
    })
}
