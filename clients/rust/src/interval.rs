//! A `std::time::Duration` as a Postgres `interval` parameter, exact to the microsecond.

use std::error::Error as StdError;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

/// A duration sent to (or read from) Postgres as an `interval` in its binary
/// form: microseconds, no days, no months. So `Duration::from_secs(90)` is
/// stored as `00:01:30`, with no text parsing on either side.
///
/// The worker and [`push`](crate::push) use it for every interval parameter;
/// it is public so that your own queries can bind a `Duration` as well:
///
/// ```no_run
/// # async fn f(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
/// use queue_client::PgInterval;
/// use std::time::Duration;
/// client.query("SELECT queue_touch($1, $2, $3)", &[&42i64, &PgInterval(Duration::from_secs(600)), &1i32]).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgInterval(pub Duration);

impl PgInterval {
    /// The duration in whole microseconds, or an error when it does not fit
    /// an `interval` (more than about 292 000 years).
    pub fn micros(&self) -> Result<i64, crate::Error> {
        i64::try_from(self.0.as_micros()).map_err(|_| {
            crate::Error::InvalidArgument(format!("duration {:?} does not fit a Postgres interval", self.0))
        })
    }
}

impl From<Duration> for PgInterval {
    fn from(d: Duration) -> Self {
        PgInterval(d)
    }
}

impl ToSql for PgInterval {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        let micros = i64::try_from(self.0.as_micros())
            .map_err(|_| format!("duration {:?} does not fit a Postgres interval", self.0))?;
        out.put_i64(micros);
        out.put_i32(0); // days
        out.put_i32(0); // months
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::INTERVAL
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for PgInterval {
    /// Reads an interval as a duration, counting a day as 24 hours and a month
    /// as 30 days (as Postgres's own `extract(epoch ...)` does). A negative
    /// interval is an error.
    fn from_sql(_ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        if raw.len() != 16 {
            return Err("an interval must be 16 bytes".into());
        }
        let micros = i64::from_be_bytes(raw[0..8].try_into()?);
        let days = i32::from_be_bytes(raw[8..12].try_into()?) as i64;
        let months = i32::from_be_bytes(raw[12..16].try_into()?) as i64;
        let total = micros as i128 + (days as i128 + months as i128 * 30) * 86_400_000_000;
        if total < 0 {
            return Err(format!("negative interval ({total} microseconds)").into());
        }
        Ok(PgInterval(Duration::from_micros(u64::try_from(total)?)))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::INTERVAL
    }
}
