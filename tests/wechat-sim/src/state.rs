//! The simulator's mutable state, behind one mutex.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};

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
    pub issued_at: DateTime<Utc>,
    pub used: bool,
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
        let rec = Code {
            appid: appid.to_owned(),
            openid: openid.to_owned(),
            unionid: unionid.map(str::to_owned),
            phone: phone.map(str::to_owned),
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
        }
    }

    /// Drops state that can no longer matter, so a long-running sandbox stays small.
    pub fn prune(&mut self) {
        let now = self.now();
        let day_ago = now - TimeDelta::days(1);
        let code_cutoff = now - delta(self.cfg.code_lifetime) - TimeDelta::hours(1);
        self.tokens.retain(|_, t| t.expires_at > day_ago);
        for codes in [&mut self.login_codes, &mut self.oauth_codes, &mut self.phone_codes] {
            codes.retain(|_, c| c.issued_at > code_cutoff);
        }
        let minute = now.timestamp() / 60;
        self.login_minutes.retain(|k, _| k.2 >= minute - 1);
        self.client_msg_ids.retain(|_, (_, at)| *at > day_ago);
        let yesterday = (now + TimeDelta::hours(8) - TimeDelta::days(1)).date_naive();
        self.daily.retain(|k, _| k.0 >= yesterday);
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum CodeKind {
    Login,
    OAuth,
    Phone,
}
