//! The simulator's mutable state, behind one mutex.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};

use crate::cards::InvoiceState;
use crate::config::{SimApp, SimConfig};
use crate::faults::{Faults, Prng};
use crate::record::{PushedEvent, QrCode, RecordedCall, SentSubscribeMessage, SentTemplateMessage, TemplateStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenSource {
    Stable,
    Classic,
}

#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub appid: String,
    pub source: TokenSource,
    pub expires_at: DateTime<Utc>,
    pub invalid_at: Option<DateTime<Utc>>,
}

pub(crate) enum TokenState<'a> {
    Valid(&'a Token),
    Invalid,
    Expired,
    Unknown,
}

/// A code issued for wx.login, OAuth or getPhoneNumber.
#[derive(Debug, Clone)]
pub(crate) struct Code {
    pub appid: String,
    pub openid: String,
    pub unionid: Option<String>,
    pub phone: Option<String>,
    /// OAuth scope (`snsapi_base` unless the authorize step asked for more).
    pub scope: Option<String>,
    pub issued_at: DateTime<Utc>,
    pub used: bool,
}

/// A user's WeChat Pay real-name record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RealName {
    pub name: String,
    pub cred_id: String,
}

/// A `getticket` ticket.
#[derive(Debug, Clone)]
pub(crate) struct Ticket {
    pub appid: String,
    pub expires_at: DateTime<Utc>,
}

/// The people behind openids: one person has one openid per app, so events for one
/// payer reach each app under that app's own openid.
#[derive(Debug, Default)]
pub(crate) struct People {
    by_openid: HashMap<UserKey, u64>,
    openids: BTreeMap<(u64, String), String>,
    next: u64,
}

impl People {
    /// The person behind `openid` in `appid` (a new one if the simulator never saw it).
    pub fn person(&mut self, appid: &str, openid: &str) -> u64 {
        let key = (appid.to_owned(), openid.to_owned());
        if let Some(p) = self.by_openid.get(&key) {
            return *p;
        }
        self.next += 1;
        let p = self.next;
        self.by_openid.insert(key, p);
        self.openids.insert((p, appid.to_owned()), openid.to_owned());
        p
    }

    pub fn lookup(&self, appid: &str, openid: &str) -> Option<u64> {
        self.by_openid.get(&(appid.to_owned(), openid.to_owned())).copied()
    }

    /// The person's openid in `appid`, minted on first use.
    pub fn openid_in(&mut self, person: u64, appid: &str) -> String {
        if let Some(o) = self.openids.get(&(person, appid.to_owned())) {
            return o.clone();
        }
        let openid = crate::ids::new_openid();
        self.openids.insert((person, appid.to_owned()), openid.clone());
        self.by_openid.insert((appid.to_owned(), openid.clone()), person);
        openid
    }

    /// Openids the simulator has seen in `appid`, oldest person first.
    pub fn known(&self, appid: &str) -> Vec<String> {
        self.openids
            .iter()
            .filter(|((_, a), _)| a == appid)
            .map(|(_, o)| o.clone())
            .collect()
    }
}

pub(crate) type UserKey = (String, String);

pub(crate) struct State {
    pub cfg: SimConfig,
    pub apps: BTreeMap<String, SimApp>,
    pub clock_offset: TimeDelta,
    pub tokens: HashMap<String, Token>,
    pub current_stable: HashMap<String, String>,
    pub current_classic: HashMap<String, String>,
    pub token_issues: HashMap<String, u64>,
    pub login_codes: HashMap<String, Code>,
    pub oauth_codes: HashMap<String, Code>,
    pub phone_codes: HashMap<String, Code>,
    pub session_keys: HashMap<UserKey, String>,
    /// (appid, openid, minute) → jscode2session calls.
    pub login_minutes: HashMap<(String, String, i64), u64>,
    /// (appid, openid, template_id) → one-time consents left.
    pub subscriptions: HashMap<(String, String, String), u32>,
    pub long_term: HashSet<UserKey>,
    pub unfollowed: HashSet<UserKey>,
    pub template_status: HashMap<UserKey, TemplateStatus>,
    /// (appid, client_msg_id) → (msgid, first sent).
    pub client_msg_ids: HashMap<UserKey, (u64, DateTime<Utc>)>,
    /// (Beijing day, appid, counter) → count.
    pub daily: HashMap<(NaiveDate, String, String), u64>,
    pub faults_all: Option<Faults>,
    pub faults_by_path: BTreeMap<String, Faults>,
    pub prng: Prng,
    pub next_msgid: u64,
    pub calls: VecDeque<RecordedCall>,
    pub subscribe_sent: VecDeque<SentSubscribeMessage>,
    pub template_sent: VecDeque<SentTemplateMessage>,
    pub pushes: VecDeque<PushedEvent>,
    pub qrcodes: VecDeque<QrCode>,
    pub calls_since_prune: u64,
    pub realname_codes: HashMap<String, Code>,
    /// openid → WeChat Pay real name.
    pub real_names: HashMap<String, RealName>,
    /// appid → the menu as stored (`{"button": [...]}`).
    pub menus: HashMap<String, serde_json::Value>,
    /// Users who followed through the simulator (scans of theirs are `SCAN`s).
    pub followed: HashSet<UserKey>,
    pub people: People,
    /// The unionid each (appid, openid) reports, for apps bound to an open platform.
    pub unionids: HashMap<(String, String), String>,
    pub tickets: HashMap<String, Ticket>,
    /// (appid, type) → the current ticket.
    pub current_ticket: HashMap<UserKey, String>,
    pub ticket_issues: HashMap<String, u64>,
    pub invoice: InvoiceState,
}

pub(crate) fn push_bounded<T>(q: &mut VecDeque<T>, item: T, limit: usize) {
    if q.len() >= limit.max(1) {
        q.pop_front();
    }
    q.push_back(item);
}

pub(crate) fn delta(d: std::time::Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

impl State {
    pub fn new(cfg: SimConfig) -> Self {
        let apps = cfg.apps.iter().map(|a| (a.appid.clone(), a.clone())).collect();
        Self {
            apps,
            clock_offset: TimeDelta::zero(),
            tokens: HashMap::new(),
            current_stable: HashMap::new(),
            current_classic: HashMap::new(),
            token_issues: HashMap::new(),
            login_codes: HashMap::new(),
            oauth_codes: HashMap::new(),
            phone_codes: HashMap::new(),
            session_keys: HashMap::new(),
            login_minutes: HashMap::new(),
            subscriptions: HashMap::new(),
            long_term: HashSet::new(),
            unfollowed: HashSet::new(),
            template_status: HashMap::new(),
            client_msg_ids: HashMap::new(),
            daily: HashMap::new(),
            faults_all: None,
            faults_by_path: BTreeMap::new(),
            prng: Prng::new(cfg.seed),
            next_msgid: crate::ids::first_msgid(),
            calls: VecDeque::new(),
            subscribe_sent: VecDeque::new(),
            template_sent: VecDeque::new(),
            pushes: VecDeque::new(),
            qrcodes: VecDeque::new(),
            calls_since_prune: 0,
            realname_codes: HashMap::new(),
            real_names: HashMap::new(),
            menus: HashMap::new(),
            followed: HashSet::new(),
            people: People::default(),
            unionids: HashMap::new(),
            tickets: HashMap::new(),
            current_ticket: HashMap::new(),
            ticket_issues: HashMap::new(),
            invoice: InvoiceState::default(),
            cfg,
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.clock_offset
    }

    /// Increments and returns a per-app counter for the current Beijing day.
    pub fn count_daily(&mut self, appid: &str, counter: &str) -> u64 {
        let day = (self.now() + TimeDelta::hours(8)).date_naive();
        let n = self
            .daily
            .entry((day, appid.to_owned(), counter.to_owned()))
            .or_insert(0);
        *n += 1;
        *n
    }

    pub fn daily_count(&self, appid: &str, counter: &str) -> u64 {
        let day = (self.now() + TimeDelta::hours(8)).date_naive();
        self.daily
            .get(&(day, appid.to_owned(), counter.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    pub fn faults_for(&self, path: &str) -> Option<&Faults> {
        self.faults_by_path.get(path).or(self.faults_all.as_ref())
    }

    pub fn msgid(&mut self) -> u64 {
        self.next_msgid += 1;
        self.next_msgid
    }

    pub fn token_state(&self, token: &str) -> TokenState<'_> {
        let now = self.now();
        match self.tokens.get(token) {
            None => TokenState::Unknown,
            Some(t) => match t.invalid_at {
                Some(inv) if inv <= now && inv < t.expires_at => TokenState::Invalid,
                _ if t.expires_at <= now => TokenState::Expired,
                _ => TokenState::Valid(t),
            },
        }
    }

    pub fn mint_token(&mut self, appid: &str, source: TokenSource) -> String {
        let token = crate::ids::access_token();
        let expires_at = self.now() + delta(self.cfg.token_lifetime);
        self.tokens.insert(
            token.clone(),
            Token {
                appid: appid.to_owned(),
                source,
                expires_at,
                invalid_at: None,
            },
        );
        let current = match source {
            TokenSource::Stable => &mut self.current_stable,
            TokenSource::Classic => &mut self.current_classic,
        };
        current.insert(appid.to_owned(), token.clone());
        *self.token_issues.entry(appid.to_owned()).or_insert(0) += 1;
        token
    }

    /// Marks the app's tokens (of one source, or all) invalid from `at` on.
    pub fn invalidate(&mut self, appid: &str, source: Option<TokenSource>, at: DateTime<Utc>) {
        let now = self.now();
        for t in self.tokens.values_mut() {
            if t.appid == appid && source.is_none_or(|s| s == t.source) && t.expires_at > now {
                t.invalid_at = Some(t.invalid_at.map_or(at, |old| old.min(at)));
            }
        }
        if source.is_none_or(|s| s == TokenSource::Stable) {
            self.current_stable.remove(appid);
        }
        if source.is_none_or(|s| s == TokenSource::Classic) {
            self.current_classic.remove(appid);
        }
    }

    pub fn expire(&mut self, appid: &str) {
        let now = self.now();
        for t in self.tokens.values_mut() {
            if t.appid == appid && t.expires_at > now && t.invalid_at.is_none_or(|i| i > now) {
                t.expires_at = now;
            }
        }
        self.current_stable.remove(appid);
        self.current_classic.remove(appid);
    }

    pub fn issue_code(
        &mut self,
        kind: CodeKind,
        appid: &str,
        openid: &str,
        unionid: Option<&str>,
        phone: Option<&str>,
    ) -> String {
        let code = crate::ids::code();
        if !openid.is_empty() {
            self.people.person(appid, openid);
        }
        // An app bound to an open-platform account reports the user's unionid
        // in every sign-in, web OAuth included.
        let unionid = unionid
            .map(str::to_owned)
            .or_else(|| self.unionids.get(&(appid.to_owned(), openid.to_owned())).cloned());
        let rec = Code {
            appid: appid.to_owned(),
            openid: openid.to_owned(),
            unionid,
            phone: phone.map(str::to_owned),
            scope: None,
            issued_at: self.now(),
            used: false,
        };
        self.codes(kind).insert(code.clone(), rec);
        code
    }

    pub fn codes(&mut self, kind: CodeKind) -> &mut HashMap<String, Code> {
        match kind {
            CodeKind::Login => &mut self.login_codes,
            CodeKind::OAuth => &mut self.oauth_codes,
            CodeKind::Phone => &mut self.phone_codes,
            CodeKind::RealName => &mut self.realname_codes,
        }
    }

    /// The current ticket of `kind` for `appid`, minting one when there is none or it has
    /// less than the stable-token refresh window left (older ones stay valid until expiry).
    pub fn ticket(&mut self, appid: &str, kind: &str) -> (String, i64) {
        let now = self.now();
        let key = (appid.to_owned(), kind.to_owned());
        if let Some(t) = self.current_ticket.get(&key)
            && let Some(rec) = self.tickets.get(t)
            && rec.expires_at - now > delta(self.cfg.stable_refresh_window)
        {
            return (t.clone(), (rec.expires_at - now).num_seconds());
        }
        let ticket = crate::ids::card_ticket();
        let lifetime = delta(self.cfg.ticket_lifetime);
        self.tickets.insert(
            ticket.clone(),
            Ticket {
                appid: appid.to_owned(),
                expires_at: now + lifetime,
            },
        );
        self.current_ticket.insert(key, ticket.clone());
        *self.ticket_issues.entry(appid.to_owned()).or_insert(0) += 1;
        (ticket, lifetime.num_seconds())
    }

    /// Whether `ticket` is a live ticket of `appid`.
    pub fn ticket_valid(&self, appid: &str, ticket: &str) -> bool {
        let now = self.now();
        self.tickets
            .get(ticket)
            .is_some_and(|t| t.appid == appid && t.expires_at > now)
    }

    /// Whether the user follows the account: everyone does unless they unfollowed.
    pub fn is_following(&self, appid: &str, openid: &str) -> bool {
        !self.unfollowed.contains(&(appid.to_owned(), openid.to_owned()))
    }

    /// Drops state that can no longer matter, so a long-running sandbox stays small.
    pub fn prune(&mut self) {
        let now = self.now();
        let day_ago = now - TimeDelta::days(1);
        let code_cutoff = now - delta(self.cfg.code_lifetime) - TimeDelta::hours(1);
        self.tokens.retain(|_, t| t.expires_at > day_ago);
        for codes in [
            &mut self.login_codes,
            &mut self.oauth_codes,
            &mut self.phone_codes,
            &mut self.realname_codes,
        ] {
            codes.retain(|_, c| c.issued_at > code_cutoff);
        }
        let minute = now.timestamp() / 60;
        self.login_minutes.retain(|k, _| k.2 >= minute - 1);
        self.client_msg_ids.retain(|_, (_, at)| *at > day_ago);
        let yesterday = (now + TimeDelta::hours(8) - TimeDelta::days(1)).date_naive();
        self.daily.retain(|k, _| k.0 >= yesterday);
        self.tickets.retain(|_, t| t.expires_at > day_ago);
        let media_cutoff = now - delta(self.cfg.invoice_media_lifetime) - TimeDelta::hours(1);
        self.invoice.prune(media_cutoff);
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum CodeKind {
    Login,
    OAuth,
    Phone,
    /// City-service real-name authorisation.
    RealName,
}
