//! Every SDMP message ozbus knows: one typed struct per message, and its schema table.
//!
//! Each message is declared once, with the `message!` macro, as a list of parameters in the order
//! ozbus writes them. From that one declaration come the struct (what a program reads and builds),
//! the [`MessageSpec`] table (what validation checks and the protocol document shows), and the
//! conversions between the two. Fields borrow from the frame they were parsed from: decoding a
//! message allocates nothing.
//!
//! Messages to ozbus also accept TK (a token the sender wants acknowledged with MV) and TD (the
//! tenant); the macro adds both to every `request`. The messages that report something to keep
//! (call reports and UO) are `keyed request`s: they also accept XK, the ozbus extension that
//! names a message so that a re-send of it has no second effect.

use crate::error::ErrorCode;
use crate::schema::{Code, Direction, MessageSpec, ParamSpec, ParamType, Rule, MAX_PARAMS};

/// A number with at most two decimals, kept as hundredths (LC's OD `1.25` is `Hundredths(125)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hundredths(pub u32);

/// A validated parameter value, before it becomes a struct field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot<'a> {
    Text(&'a [u8]),
    Int(u64),
    Flag,
}

/// One optional slot per row of a message's table, in table order.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slots<'a>(pub [Option<Slot<'a>>; MAX_PARAMS]);

impl<'a> Slots<'a> {
    pub const EMPTY: Slots<'static> = Slots([None; MAX_PARAMS]);

    fn from_fields(fields: &[Option<Slot<'a>>]) -> Self {
        let mut slots = Slots([None; MAX_PARAMS]);
        slots.0[..fields.len()].copy_from_slice(fields);
        slots
    }
}

/// How a struct field reads from and writes to its slot.
///
/// Validation has already checked presence and range, so a missing or odd slot can only come from
/// a bug; the conversions then fall back to a neutral value rather than panic.
pub(crate) trait Field<'a>: Sized {
    fn from_slot(slot: Option<Slot<'a>>) -> Self;
    fn to_slot(&self) -> Option<Slot<'a>>;
}

impl<'a> Field<'a> for &'a [u8] {
    fn from_slot(slot: Option<Slot<'a>>) -> Self {
        match slot {
            Some(Slot::Text(text)) => text,
            _ => b"",
        }
    }
    fn to_slot(&self) -> Option<Slot<'a>> {
        Some(Slot::Text(self))
    }
}

impl<'a> Field<'a> for Option<&'a [u8]> {
    fn from_slot(slot: Option<Slot<'a>>) -> Self {
        match slot {
            Some(Slot::Text(text)) => Some(text),
            _ => None,
        }
    }
    fn to_slot(&self) -> Option<Slot<'a>> {
        self.map(Slot::Text)
    }
}

impl<'a> Field<'a> for bool {
    fn from_slot(slot: Option<Slot<'a>>) -> Self {
        slot.is_some()
    }
    fn to_slot(&self) -> Option<Slot<'a>> {
        self.then_some(Slot::Flag)
    }
}

macro_rules! int_fields {
    ($($int:ty),*) => {$(
        impl<'a> Field<'a> for $int {
            fn from_slot(slot: Option<Slot<'a>>) -> Self {
                match slot {
                    Some(Slot::Int(n)) => <$int>::try_from(n).unwrap_or(<$int>::MAX),
                    _ => 0,
                }
            }
            fn to_slot(&self) -> Option<Slot<'a>> {
                Some(Slot::Int(u64::from(*self)))
            }
        }
        impl<'a> Field<'a> for Option<$int> {
            fn from_slot(slot: Option<Slot<'a>>) -> Self {
                slot.map(|s| <$int>::from_slot(Some(s)))
            }
            fn to_slot(&self) -> Option<Slot<'a>> {
                self.and_then(|n| n.to_slot())
            }
        }
    )*};
}
int_fields!(u16, u32, u64);

impl<'a> Field<'a> for Option<Hundredths> {
    fn from_slot(slot: Option<Slot<'a>>) -> Self {
        Option::<u32>::from_slot(slot).map(Hundredths)
    }
    fn to_slot(&self) -> Option<Slot<'a>> {
        self.map(|h| Slot::Int(u64::from(h.0)))
    }
}

/// A message struct together with its table.
pub(crate) trait Body<'a>: Sized {
    const SPEC: &'static MessageSpec;
    fn from_slots(slots: &Slots<'a>) -> Self;
    fn to_slots(&self) -> Slots<'a>;
}

// Constructors for the tables' type column, short so that a table reads like the spec.
const fn text(min: u32, max: u32) -> ParamType {
    ParamType::Str { min, max }
}
const fn user(min: u32, max: u32) -> ParamType {
    ParamType::User { min, max }
}
const fn int(min: u64, max: u64) -> ParamType {
    ParamType::Int { min, max }
}
const fn code(text: &str) -> Code {
    let bytes = text.as_bytes();
    Code([bytes[0], bytes[1]])
}
const FLAG: ParamType = ParamType::Flag;
const TENANT: ParamType = ParamType::Tenant;
const SEQ_MAX: u64 = i64::MAX as u64;

/// Declares one message: its struct, its table and the conversions between them.
///
/// `request` messages (to ozbus) get TK and TD appended, `keyed request`s XK before them;
/// `event` messages (from ozbus) list every parameter themselves.
macro_rules! message {
    (@required required) => { true };
    (@required optional) => { false };

    (
        $(#[doc = $doc:literal])*
        keyed request $ty:ident $(<$lt:lifetime>)? = $code:literal, $name:literal, $iface:literal,
        rules [$($rule:expr),*] {
            $( $field:ident : $fty:ty = $pcode:literal, $pname:literal, $ptype:expr, $req:ident, $note:literal; )*
        }
    ) => {
        message! {
            $(#[doc = $doc])*
            request $ty $(<$lt>)? = $code, $name, $iface, rules [$($rule),*] {
                $( $field : $fty = $pcode, $pname, $ptype, $req, $note; )*
                xk: Option<&'a [u8]> = "XK", "IdempotencyKey", text(1, 80), optional,
                    "ozbus extension: names the message; a re-send under the same key has no second effect";
            }
        }
    };

    (
        $(#[doc = $doc:literal])*
        request $ty:ident $(<$lt:lifetime>)? = $code:literal, $name:literal, $iface:literal,
        rules [$($rule:expr),*] {
            $( $field:ident : $fty:ty = $pcode:literal, $pname:literal, $ptype:expr, $req:ident, $note:literal; )*
        }
    ) => {
        message! {
            $(#[doc = $doc])*
            @define ToServer $ty $(<$lt>)? = $code, $name, $iface, rules [$($rule),*] {
                $( $field : $fty = $pcode, $pname, $ptype, $req, $note; )*
                tk: Option<&'a [u8]> = "TK", "Token", text(1, 80), optional,
                    "acknowledged with MV once the message's effect is durable";
                td: Option<&'a [u8]> = "TD", "TenantDescriptor", TENANT, optional,
                    "the tenant; absent: the connection's tenant";
            }
        }
    };
    (
        $(#[doc = $doc:literal])*
        event $ty:ident $(<$lt:lifetime>)? = $code:literal, $name:literal, $iface:literal,
        rules [$($rule:expr),*] {
            $( $field:ident : $fty:ty = $pcode:literal, $pname:literal, $ptype:expr, $req:ident, $note:literal; )*
        }
    ) => {
        message! {
            $(#[doc = $doc])*
            @define FromServer $ty $(<$lt>)? = $code, $name, $iface, rules [$($rule),*] {
                $( $field : $fty = $pcode, $pname, $ptype, $req, $note; )*
            }
        }
    };
    (
        $(#[doc = $doc:literal])*
        @define $direction:ident $ty:ident $(<$lt:lifetime>)? = $code:literal, $name:literal, $iface:literal,
        rules [$($rule:expr),*] {
            $( $field:ident : $fty:ty = $pcode:literal, $pname:literal, $ptype:expr, $req:ident, $note:literal; )*
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
        pub struct $ty $(<$lt>)? {
            $( #[doc = concat!($pcode, " ", $pname, ": ", $note)] pub $field: $fty, )*
        }

        impl<'a> Body<'a> for $ty $(<$lt>)? {
            const SPEC: &'static MessageSpec = &MessageSpec {
                code: code($code),
                name: $name,
                direction: Direction::$direction,
                interface: code($iface),
                summary: concat!($($doc),*),
                params: &[ $( ParamSpec {
                    code: code($pcode),
                    name: $pname,
                    ty: $ptype,
                    required: message!(@required $req),
                    note: $note,
                }, )* ],
                rules: &[$($rule),*],
                build: |slots| Message::$ty(<$ty>::from_slots(slots)),
            };

            #[allow(unused_mut, unused_variables)]
            fn from_slots(slots: &Slots<'a>) -> Self {
                let mut slots = slots.0.iter().copied();
                $ty { $( $field: Field::from_slot(slots.next().flatten()), )* }
            }

            fn to_slots(&self) -> Slots<'a> {
                Slots::from_fields(&[$( self.$field.to_slot() ),*])
            }
        }
    };
}

message! {
    /// Enumerate Outcomes: opens a transaction that receives one OZ per matching call outcome.
    request Eo<'a> = "EO", "EnumerateOutcomes", "MA",
    rules [Rule::AnyOf(&[code("SO"), code("FO"), code("MO")], ErrorCode::NoOutcomeClass)] {
        tx: &'a [u8] = "TX", "TransactionIdentifier", text(1, 87), required, "names the transaction; echoed on every OZ and on EF";
        cn: Option<&'a [u8]> = "CN", "CampaignName", user(1, 80), optional, "only outcomes of this campaign; absent: every campaign";
        so: bool = "SO", "SuccessOutcomes", FLAG, optional, "outcomes of calls completed by an agent";
        fo: bool = "FO", "FailureOutcomes", FLAG, optional, "outcomes of calls that never reached an agent";
        mo: bool = "MO", "ManagementOutcomes", FLAG, optional, "outcome updates sent with UO";
        ps: Option<&'a [u8]> = "PS", "PersistToken", user(1, 80), optional, "keeps the transaction and its events while no connection holds it";
        cs: Option<u32> = "CS", "RateControl", int(1, 1_000_000), optional, "events per second during roll-forward; default 100";
        xs: bool = "XS", "Sequenced", FLAG, optional, "ozbus extension: every OZ carries XS and XT";
        xr: Option<u64> = "XR", "ResumeAfter", int(0, 1 << 63), optional, "ozbus extension: start delivery after this sequence number";
    }
}

message! {
    /// Enumerate End: ends the active transaction TX (and forgets its PersistToken).
    request Ee<'a> = "EE", "EnumerateEnd", "MA", rules [] {
        tx: &'a [u8] = "TX", "TransactionIdentifier", text(1, 87), required, "the transaction to end";
    }
}

message! {
    /// Acknowledge (ozbus extension): every event of TX up to and including XS is processed.
    request Xa<'a> = "XA", "Acknowledge", "MA", rules [] {
        tx: &'a [u8] = "TX", "TransactionIdentifier", text(1, 87), required, "a transaction opened with PS and XS";
        xs: u64 = "XS", "Sequence", int(0, SEQ_MAX), required, "the last sequence number processed";
    }
}

message! {
    /// Update Outcomes: a management correction of a known call's outcome, delivered to MO transactions.
    keyed request Uo<'a> = "UO", "UpdateOutcomes", "MA",
    rules [Rule::TnOrSi, Rule::ExactlyOne(code("RE"), code("AO"))] {
        tx: &'a [u8] = "TX", "TransactionIdentifier", text(1, 87), required, "names the request in the record's audit trail";
        cn: &'a [u8] = "CN", "CampaignName", user(1, 80), required, "";
        tn: Option<&'a [u8]> = "TN", "TelephoneNumber", text(0, 80), optional, "";
        si: Option<&'a [u8]> = "SI", "SessionIdentifier", text(1, 120), optional, "";
        re: Option<u16> = "RE", "Reason", int(0, 999), optional, "the new dialing cycle outcome";
        ao: Option<u16> = "AO", "AgentOutcome", int(0, 9999), optional, "the new agent outcome";
        dt: &'a [u8] = "DT", "Data", text(1, 128_000), required, "replaces the record's data";
        co: Option<&'a [u8]> = "CO", "Conversion", text(1, 50), optional, "";
        as_data: Option<&'a [u8]> = "AS", "ApplicationSpecificData", text(1, 4000), optional, "";
    }
}

message! {
    /// Keep-alive settings: with VI > 0 ozbus sends DA every VI seconds; VI0 stops; no VI: one DA now.
    request Vs<'a> = "VS", "VerifySession", "MA", rules [] {
        vi: Option<u32> = "VI", "VerifyInterval", int(0, 99_999), optional, "seconds between DA";
    }
}

message! {
    /// User Authenticate: answered by US.
    request Ua<'a> = "UA", "UserAuthenticate", "MA", rules [] {
        an: Option<&'a [u8]> = "AN", "AgentIdentifier", user(1, 80), optional, "the user name";
        qi: Option<&'a [u8]> = "QI", "UserIdentifier", text(1, 80), optional, "a user id, instead of AN";
        pw: Option<&'a [u8]> = "PW", "Password", text(0, 80), optional, "";
    }
}

message! {
    /// Make Call: registers a call record that a later outcome refers to.
    keyed request Mc<'a> = "MC", "MakeCall", "CA", rules [Rule::TnOrSi] {
        cn: &'a [u8] = "CN", "CampaignName", user(1, 80), required, "";
        tn: Option<&'a [u8]> = "TN", "TelephoneNumber", text(0, 80), optional, "";
        si: Option<&'a [u8]> = "SI", "SessionIdentifier", text(1, 120), optional, "defaults to TN; unique among the tenant's open records";
        an: Option<&'a [u8]> = "AN", "AgentIdentifier", user(1, 80), optional, "a preview record for this agent";
        as_data: Option<&'a [u8]> = "AS", "ApplicationSpecificData", text(1, 4000), optional, "echoed on OZ";
        dt: Option<&'a [u8]> = "DT", "Data", text(1, 128_000), optional, "line-of-business data, echoed on OZ";
        ce: Option<u32> = "CE", "CallExpiry", int(1, 2_592_000), optional, "seconds from now; not dialed by then: a failure outcome with RE 0";
    }
}

message! {
    /// Remove Number: a pending record ends with a failure outcome RE 0.
    keyed request Rn<'a> = "RN", "RemoveNumber", "CA", rules [Rule::TnOrSi] {
        cn: &'a [u8] = "CN", "CampaignName", user(1, 80), required, "";
        tn: Option<&'a [u8]> = "TN", "TelephoneNumber", text(0, 80), optional, "";
        si: Option<&'a [u8]> = "SI", "SessionIdentifier", text(1, 120), optional, "";
    }
}

message! {
    /// Line Connected: the telephony layer connected the call (to an agent, with AN).
    keyed request Lc<'a> = "LC", "LineConnected", "CT", rules [Rule::TnOrSi] {
        cn: &'a [u8] = "CN", "CampaignName", user(1, 80), required, "";
        tn: Option<&'a [u8]> = "TN", "TelephoneNumber", text(0, 80), optional, "";
        si: Option<&'a [u8]> = "SI", "SessionIdentifier", text(1, 120), optional, "";
        an: Option<&'a [u8]> = "AN", "AgentIdentifier", user(1, 80), optional, "the agent the switch connected";
        ti: Option<&'a [u8]> = "TI", "TrunkIdentifier", text(1, 80), optional, "";
        dn: Option<&'a [u8]> = "DN", "DialedNumber", text(0, 80), optional, "inbound calls";
        ma: bool = "MA", "Machine", FLAG, optional, "answer machine detected";
        od: Option<Hundredths> = "OD", "OffhookDelay", ParamType::Decimal { max_hundredths: 999 }, optional, "";
        gi: Option<&'a [u8]> = "GI", "GatewayIdentifier", text(1, 80), optional, "";
        ms: Option<&'a [u8]> = "MS", "Message", text(0, 255), optional, "";
    }
}

message! {
    /// Call Failed: ends the record with a failure outcome whose RE is CA.
    keyed request Cf<'a> = "CF", "CallFailed", "CT", rules [Rule::TnOrSi] {
        ca: u16 = "CA", "Cause", int(0, 999), required, "becomes RE on the OZ";
        cn: &'a [u8] = "CN", "CampaignName", user(1, 80), required, "";
        tn: Option<&'a [u8]> = "TN", "TelephoneNumber", text(0, 80), optional, "";
        si: Option<&'a [u8]> = "SI", "SessionIdentifier", text(1, 120), optional, "";
        ir: Option<u16> = "IR", "RawCause", int(0, 999), optional, "the network's own cause code";
    }
}

message! {
    /// Transaction Complete: the agent ends its current call with a success outcome.
    keyed request Tc<'a> = "TC", "TransactionComplete", "AG", rules [] {
        an: &'a [u8] = "AN", "AgentIdentifier", user(1, 80), required, "";
        ao: Option<u16> = "AO", "AgentOutcome", int(0, 9999), optional, "absent: 0 (live call, unspecified)";
        dt: Option<&'a [u8]> = "DT", "Data", text(1, 128_000), optional, "replaces the record's data";
        co: Option<&'a [u8]> = "CO", "Conversion", text(1, 50), optional, "";
        sr: Option<u16> = "SR", "SuccessRate", int(0, 100), optional, "";
        ba: Option<&'a [u8]> = "BA", "RingBackAgent", user(1, 80), optional, "";
        bn: Option<&'a [u8]> = "BN", "RingBackNumber", text(1, 80), optional, "";
        bt: Option<&'a [u8]> = "BT", "RingBackTimer", text(1, 50), optional, "";
        nl: bool = "NL", "NotLive", FLAG, optional, "legacy: accepted and ignored";
        cu: bool = "CU", "ConversionUnsuccessful", FLAG, optional, "legacy: accepted and ignored";
    }
}

message! {
    /// Begin Dial: the agent dials (or, with DD, declines) its oldest pending preview record.
    keyed request Bd<'a> = "BD", "BeginDial", "AG", rules [Rule::OnlyWith(code("AO"), code("DD"))] {
        an: &'a [u8] = "AN", "AgentIdentifier", user(1, 80), required, "";
        dd: bool = "DD", "DontDial", FLAG, optional, "decline the preview: a failure outcome with RE 0";
        ao: Option<u16> = "AO", "AgentOutcome", int(0, 9999), optional, "with DD; default 200";
    }
}

message! {
    /// Outcome Data: one call outcome for one transaction.
    event Oz<'a> = "OZ", "OutcomeData", "MA", rules [] {
        tx: &'a [u8] = "TX", "TransactionIdentifier", text(1, 87), required, "the transaction";
        td: Option<&'a [u8]> = "TD", "TenantDescriptor", TENANT, optional, "when the tenant is not `default`";
        cn: &'a [u8] = "CN", "CampaignName", user(1, 80), required, "";
        an: Option<&'a [u8]> = "AN", "AgentIdentifier", user(1, 80), optional, "when an agent handled or declined the call";
        si: &'a [u8] = "SI", "SessionIdentifier", text(1, 120), required, "equals TN when the record had no SI";
        tn: Option<&'a [u8]> = "TN", "TelephoneNumber", text(0, 80), optional, "when known and different from SI";
        re: u16 = "RE", "Reason", int(0, 999), required, "the dialing cycle outcome";
        ao: Option<u16> = "AO", "AgentOutcome", int(0, 9999), optional, "agent-completed calls and preview rejects";
        dd: bool = "DD", "DontDial", FLAG, optional, "preview rejects";
        as_data: Option<&'a [u8]> = "AS", "ApplicationSpecificData", text(1, 4000), optional, "from MC";
        co: Option<&'a [u8]> = "CO", "Conversion", text(1, 50), optional, "";
        ba: Option<&'a [u8]> = "BA", "RingBackAgent", user(1, 80), optional, "";
        bn: Option<&'a [u8]> = "BN", "RingBackNumber", text(1, 80), optional, "";
        bt: Option<&'a [u8]> = "BT", "RingBackTimer", text(1, 50), optional, "";
        xs: Option<u64> = "XS", "Sequence", int(0, SEQ_MAX), optional, "transactions opened with XS";
        xt: Option<&'a [u8]> = "XT", "Time", text(1, 40), optional, "UTC time the outcome was accepted, with XS";
        dt: &'a [u8] = "DT", "Data", text(0, 128_000), required, "always last, possibly empty";
    }
}

message! {
    /// Gap (ozbus extension, transactions opened with XS): events XF to XL were removed by
    /// retention before the transaction received them; delivery goes on after XL.
    event Xg<'a> = "XG", "Gap", "MA", rules [] {
        tx: &'a [u8] = "TX", "TransactionIdentifier", text(1, 87), required, "";
        xf: u64 = "XF", "FirstMissing", int(0, SEQ_MAX), required, "first sequence number lost";
        xl: u64 = "XL", "LastMissing", int(0, SEQ_MAX), required, "last sequence number lost";
    }
}

message! {
    /// Enumerate Finished: the transaction TX has ended.
    event Ef<'a> = "EF", "EnumerateFinished", "MA", rules [] {
        tx: &'a [u8] = "TX", "TransactionIdentifier", text(1, 87), required, "";
        td: Option<&'a [u8]> = "TD", "TenantDescriptor", TENANT, optional, "when the EE had it";
    }
}

message! {
    /// Message Verify: the message that carried TK was accepted and its effect is durable.
    event Mv<'a> = "MV", "MessageVerify", "MA", rules [] {
        tk: &'a [u8] = "TK", "Token", text(1, 80), required, "";
        xs: Option<u64> = "XS", "Sequence", int(0, SEQ_MAX), optional, "ozbus extension, to a node forwarding reports: the sequence number of the outcome the message produced";
    }
}

message! {
    /// Error report: the message in FM was rejected and had no effect.
    event Er<'a> = "ER", "Error", "MA", rules [] {
        ec: u16 = "EC", "ErrorCode", int(0, 999), required, "";
        ms: &'a [u8] = "MS", "Message", text(0, 255), required, "the reason, for a person";
        tk: Option<&'a [u8]> = "TK", "Token", text(1, 80), optional, "when FM was cut and the message had a TK";
        fm: &'a [u8] = "FM", "FaultyMessage", ParamType::Quoted, required, "the rejected frame (first 4,000 characters), always last";
    }
}

message! {
    /// User Status: the answer to UA.
    event Us<'a> = "US", "UserStatus", "MA", rules [] {
        td: &'a [u8] = "TD", "TenantDescriptor", TENANT, required, "";
        an: Option<&'a [u8]> = "AN", "AgentIdentifier", user(1, 80), optional, "";
        rs: u16 = "RS", "Status", int(0, 5), required, "0 authenticated, 1 no such user, 2 bad password, 3 badly formed, 5 locked out";
        pg: Option<u16> = "PG", "Privileges", int(0, 65_535), optional, "bit flags: 1 agent, 2 supervisor, 4 configuration, 8 system, 256 super user";
    }
}

message! {
    /// Keep-alive from ozbus (see VS).
    event Da = "DA", "KeepAlive", "MA", rules [] {}
}

/// Lists every message once, so that the enum, the code lookup and the table list cannot disagree.
macro_rules! all_messages {
    ($( $ty:ident $(<$lt:lifetime>)? ),* $(,)?) => {
        /// Any SDMP message ozbus knows, typed.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Message<'a> {
            $( $ty($ty $(<$lt>)?), )*
        }

        /// The table of every message, in the order of the protocol document.
        pub const ALL_MESSAGES: &[&MessageSpec] = &[$( <$ty as Body>::SPEC ),*];

        impl<'a> Message<'a> {
            /// The table of this message.
            pub fn spec(&self) -> &'static MessageSpec {
                match self {
                    $( Message::$ty(_) => <$ty as Body>::SPEC, )*
                }
            }

            /// The text value of parameter `code`, if the message carries it.
            pub fn text(&self, code: Code) -> Option<&'a [u8]> {
                text_of(self.spec(), &self.slots(), code)
            }

            /// TK and TD, which any message to ozbus may carry, and XK, which the messages
            /// that report something to keep may carry, read in one pass.
            pub fn common(&self) -> Common<'a> {
                let (spec, slots) = (self.spec(), self.slots());
                Common {
                    tk: text_of(spec, &slots, Code(*b"TK")),
                    td: text_of(spec, &slots, Code(*b"TD")),
                    xk: text_of(spec, &slots, Code(*b"XK")),
                }
            }

            pub(crate) fn slots(&self) -> Slots<'a> {
                match self {
                    $( Message::$ty(body) => body.to_slots(), )*
                }
            }
        }

        $( impl<'a> From<$ty $(<$lt>)?> for Message<'a> {
            fn from(body: $ty $(<$lt>)?) -> Self { Message::$ty(body) }
        } )*
    };
}

all_messages!(
    Eo<'a>,
    Ee<'a>,
    Ef<'a>,
    Oz<'a>,
    Xa<'a>,
    Xg<'a>,
    Uo<'a>,
    Vs<'a>,
    Da,
    Ua<'a>,
    Us<'a>,
    Mv<'a>,
    Er<'a>,
    Mc<'a>,
    Rn<'a>,
    Lc<'a>,
    Cf<'a>,
    Tc<'a>,
    Bd<'a>,
);

/// TK, TD and XK of a message; see [`Message::common`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Common<'a> {
    /// TK: the token the sender wants acknowledged with MV.
    pub tk: Option<&'a [u8]>,
    /// TD: the tenant the message names.
    pub td: Option<&'a [u8]>,
    /// XK: the idempotency key naming the message (call reports and UO only).
    pub xk: Option<&'a [u8]>,
}

fn text_of<'a>(spec: &MessageSpec, slots: &Slots<'a>, code: Code) -> Option<&'a [u8]> {
    match slots.0[spec.index_of(code)?] {
        Some(Slot::Text(text)) => Some(text),
        _ => None,
    }
}

/// The table of a message code, if ozbus knows the code.
#[inline]
pub fn spec_for(code: Code) -> Option<&'static MessageSpec> {
    let slot = CODE_INDEX[code_position(code.0)];
    ALL_MESSAGES
        .get(usize::from(slot))
        .copied()
        .filter(|spec| spec.code == code)
}

/// Message codes are two characters of 36 each: a direct index from code to table, filled at
/// compile time (`u8::MAX` marks an unknown code).
static CODE_INDEX: [u8; 36 * 36] = {
    let mut index = [u8::MAX; 36 * 36];
    let mut i = 0;
    while i < ALL_MESSAGES.len() {
        index[code_position(ALL_MESSAGES[i].code.0)] = i as u8;
        i += 1;
    }
    index
};

const fn code_position([a, b]: [u8; 2]) -> usize {
    const fn digit(c: u8) -> usize {
        match c {
            b'0'..=b'9' => (c - b'0') as usize,
            b'A'..=b'Z' => (c - b'A') as usize + 10,
            // Not a code character: Code::parse never lets one through; map it somewhere valid.
            _ => 0,
        }
    }
    digit(a) * 36 + digit(b)
}

/// A message with the code form it was (or will be) written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub dialect: crate::parse::Dialect,
    pub message: Message<'a>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_fits_the_validation_slots_and_has_unique_codes() {
        assert_eq!(ALL_MESSAGES.len(), 19);
        for spec in ALL_MESSAGES {
            assert!(
                spec.params.len() <= MAX_PARAMS,
                "{} has too many parameters",
                spec.code
            );
            for (i, p) in spec.params.iter().enumerate() {
                assert_eq!(
                    spec.index_of(p.code),
                    Some(i),
                    "{} repeats {}",
                    spec.code,
                    p.code
                );
            }
            assert_eq!(spec_for(spec.code).map(|s| s.code), Some(spec.code));
        }
    }

    #[test]
    fn exactly_the_messages_that_report_something_to_keep_accept_xk() {
        for spec in ALL_MESSAGES {
            let keyed = matches!(
                spec.code.as_str(),
                "MC" | "RN" | "LC" | "CF" | "TC" | "BD" | "UO"
            );
            assert_eq!(spec.index_of(code("XK")).is_some(), keyed, "{}", spec.code);
        }
    }

    #[test]
    fn requests_accept_tk_and_td_and_events_only_where_their_table_says() {
        for spec in ALL_MESSAGES {
            let has = |c: &str| spec.index_of(code(c)).is_some();
            match spec.direction {
                Direction::ToServer => assert!(has("TK") && has("TD"), "{}", spec.code),
                // Only MV and ER carry TK, only OZ, EF and US carry TD.
                Direction::FromServer => {
                    let name = spec.code.as_str();
                    assert_eq!(has("TK"), matches!(name, "MV" | "ER"), "{name}");
                    assert_eq!(has("TD"), matches!(name, "OZ" | "EF" | "US"), "{name}");
                }
            }
        }
        assert!(spec_for(code("DA")).is_some_and(|s| s.params.is_empty()));
    }
}
