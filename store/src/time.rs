//! [`Timestamp`]: the one time type of stored data. It keeps microseconds (what
//! PostgreSQL keeps), so a value written and read back is equal to what was
//! written on either database, and it encodes on SQLite as fixed-width UTC text
//! (`2026-11-23T01:30:00.000000+00:00`), so text order is time order and equal
//! instants are equal strings. No query needs a normalisation call.

use std::fmt;
use std::ops::{Add, Sub};

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef, Postgres};
use sqlx::sqlite::{Sqlite, SqliteArgumentsBuffer, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, Type};

/// An instant in UTC at microsecond precision.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(DateTime<Utc>);

/// SQLite's text form: always six fractional digits and an explicit offset.
const SQLITE_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6f+00:00";

impl Timestamp {
    pub fn now() -> Self {
        Utc::now().into()
    }

    pub fn as_datetime(self) -> DateTime<Utc> {
        self.0
    }

    pub fn timestamp(self) -> i64 {
        self.0.timestamp()
    }

    pub fn timestamp_millis(self) -> i64 {
        self.0.timestamp_millis()
    }

    /// RFC 3339, as the API shows times.
    pub fn to_rfc3339(self) -> String {
        self.0.to_rfc3339()
    }

    /// The SQLite text form (also used to build SQL-side comparisons in tests).
    pub fn sqlite_text(self) -> String {
        self.0.format(SQLITE_FORMAT).to_string()
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(t: DateTime<Utc>) -> Self {
        Self(t.trunc_subsecs(6))
    }
}

impl From<Timestamp> for DateTime<Utc> {
    fn from(t: Timestamp) -> Self {
        t.0
    }
}

impl PartialEq<DateTime<Utc>> for Timestamp {
    fn eq(&self, other: &DateTime<Utc>) -> bool {
        self.0 == *other
    }
}

impl Add<TimeDelta> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: TimeDelta) -> Timestamp {
        (self.0 + d).into()
    }
}

impl Sub<TimeDelta> for Timestamp {
    type Output = Timestamp;
    fn sub(self, d: TimeDelta) -> Timestamp {
        (self.0 - d).into()
    }
}

impl Sub<Timestamp> for Timestamp {
    type Output = TimeDelta;
    fn sub(self, other: Timestamp) -> TimeDelta {
        self.0 - other.0
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        DateTime::<Utc>::deserialize(d).map(Into::into)
    }
}

impl Type<Postgres> for Timestamp {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for Timestamp {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Timestamp {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        <DateTime<Utc> as Decode<Postgres>>::decode(value).map(Into::into)
    }
}

impl Type<Sqlite> for Timestamp {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }

    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <DateTime<Utc> as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for Timestamp {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        <String as Encode<Sqlite>>::encode(self.sqlite_text(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Timestamp {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        <DateTime<Utc> as Decode<Sqlite>>::decode(value).map(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_microseconds_only() {
        let t: DateTime<Utc> = "2026-11-23T01:30:00.123456789Z".parse().expect("test value");
        let ts = Timestamp::from(t);
        assert_eq!(ts.as_datetime().timestamp_subsec_nanos(), 123_456_000);
        assert_eq!(Timestamp::from(ts.as_datetime()), ts);
    }

    #[test]
    fn sqlite_text_is_fixed_width_and_sorts_as_time() {
        let a: Timestamp = "2026-11-23T01:30:00Z"
            .parse::<DateTime<Utc>>()
            .expect("test value")
            .into();
        let b: Timestamp = "2026-11-23T01:30:00.5Z"
            .parse::<DateTime<Utc>>()
            .expect("test value")
            .into();
        let c: Timestamp = "2026-11-23T01:30:00.000001Z"
            .parse::<DateTime<Utc>>()
            .expect("test value")
            .into();
        assert_eq!(a.sqlite_text(), "2026-11-23T01:30:00.000000+00:00");
        assert_eq!(b.sqlite_text().len(), a.sqlite_text().len());
        let mut texts = [b.sqlite_text(), c.sqlite_text(), a.sqlite_text()];
        texts.sort();
        assert_eq!(texts, [a.sqlite_text(), c.sqlite_text(), b.sqlite_text()]);
    }
}
