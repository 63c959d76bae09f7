//! The calls the producers report, and the outcome each one must produce.
//!
//! A call follows a script: its reports, each sent only once the one before got its MV, and the
//! one outcome they make. `Failed` is a CF alone (no call record: the CF is the outcome);
//! `MadeFailed` is MC then CF (the call book opens the record, the CF closes it); and
//! `MadeCompleted` is MC, LC to an agent, and that agent's TC. Every report carries its own
//! idempotency key (XK), derived from the call's SI, so a re-send is always the same report.
//!
//! The SI says which script the call follows, and for `MadeCompleted` which agent it has, so the
//! subscribers can tell what each OZ must say: `<tenant>-<producer>-<n>` (`Failed`), with `f`
//! appended (`MadeFailed`), with `c<slot>` appended (`MadeCompleted`: the agent is
//! `<tenant>-<producer>-a<slot>`, one of the producer's agents, with one call at a time).
//!
//! Owns: the frames of a call and the OZ it must produce. Never: sends or reads anything.

/// The campaign of every call.
pub const CAMPAIGN: &str = "fault";
/// CA of every CF, and so RE of its outcome.
const CAUSE: u16 = 2;
/// AO of every TC, an agent outcome the default tables do not know: RE 10.
const AGENT_OUTCOME: u16 = 167;
const AGENT_RE: u16 = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Script {
    /// CF alone: an outcome without a call record.
    Failed,
    /// MC, then CF: the record closed with a failure outcome.
    MadeFailed,
    /// MC, LC to an agent, TC by that agent: a success outcome.
    MadeCompleted,
}

impl Script {
    pub fn needs_agent(self) -> bool {
        self == Script::MadeCompleted
    }

    /// Whether its outcome is a success outcome (an EO needs SO to receive it).
    pub fn succeeds(self) -> bool {
        self == Script::MadeCompleted
    }
}

/// One call: its SI and its reports, in order.
pub struct Call {
    pub si: String,
    pub frames: Vec<String>,
}

/// The agent `slot` of producer `index` of `tenant`.
fn agent(tenant: &str, index: usize, slot: usize) -> String {
    format!("{tenant}-{index}-a{slot}")
}

/// Call `n` of producer `index` of `tenant`, following `script` (with `slot`, the agent it
/// takes, for `MadeCompleted`). No TD: the tenant is the one the connection authenticated in.
pub fn call(script: Script, tenant: &str, index: usize, n: u64, slot: Option<usize>) -> Call {
    let c = CAMPAIGN;
    match script {
        Script::Failed => {
            let si = format!("{tenant}-{index}-{n}");
            // The SI is unique per message: it is the message's key too.
            let frames = vec![format!(r"CF\CA{CAUSE}\CN{c}\SI{si}\XK{si}")];
            Call { si, frames }
        }
        Script::MadeFailed => {
            let si = format!("{tenant}-{index}-{n}f");
            let frames = vec![
                format!(r"MC\CN{c}\SI{si}\XK{si}.mc"),
                format!(r"CF\CA{CAUSE}\CN{c}\SI{si}\XK{si}.cf"),
            ];
            Call { si, frames }
        }
        Script::MadeCompleted => {
            let slot = slot.expect("a call completed by an agent has an agent");
            let si = format!("{tenant}-{index}-{n}c{slot}");
            let an = agent(tenant, index, slot);
            let frames = vec![
                format!(r"MC\CN{c}\SI{si}\XK{si}.mc"),
                format!(r"LC\CN{c}\SI{si}\AN{an}\XK{si}.lc"),
                format!(r"TC\AN{an}\AO{AGENT_OUTCOME}\XK{si}.tc"),
            ];
            Call { si, frames }
        }
    }
}

/// The OZ the call `si` of `tenant` must produce, as transaction `tx` receives it under `xs`
/// and `xt` (messages.md fixes the order; TD is there because the tenant is not `default`).
/// `None` when `si` is no SI a producer makes.
pub fn expected_oz(tx: &str, tenant: &str, si: &str, xs: u64, xt: &str) -> Option<String> {
    let mut parts = si.splitn(3, '-');
    let (_, index, last) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = last.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let c = CAMPAIGN;
    let failed = format!(r"OZ\TX{tx}\TD{tenant}\CN{c}\SI{si}\RE{CAUSE}\XS{xs}\XT{xt}\DT");
    match &last[digits..] {
        "" | "f" => Some(failed),
        rest => {
            let slot: usize = rest.strip_prefix('c')?.parse().ok()?;
            let an = agent(tenant, index.parse().ok()?, slot);
            Some(format!(
                r"OZ\TX{tx}\TD{tenant}\CN{c}\AN{an}\SI{si}\RE{AGENT_RE}\AO{AGENT_OUTCOME}\XS{xs}\XT{xt}\DT"
            ))
        }
    }
}
