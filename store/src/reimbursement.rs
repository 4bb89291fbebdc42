//! Reimbursement: the state of a receipt with reimbursers (INIT, LOCK, CLOSURE,
//! CANCEL). The reimbursement flow (claims, locks, closures) lands here; until
//! then only tests set a state, through [`TestSupport`].

#[cfg(feature = "test-support")]
use async_trait::async_trait;
#[cfg(feature = "test-support")]
use uuid::Uuid;

pub use piaojia_core::parties::ReimbursementState;

#[cfg(feature = "test-support")]
use crate::sql::{Dialect, Sql};
#[cfg(feature = "test-support")]
use crate::{Db, Result, StoreError, Timestamp};

/// What only tests may do to stored data.
#[cfg(feature = "test-support")]
#[async_trait]
pub trait TestSupport: Send + Sync {
    /// Sets the reimbursement state of a receipt, bypassing the flow's rules.
    async fn set_reimbursement_state(&self, receipt_id: Uuid, state: ReimbursementState) -> Result<()>;
}

#[cfg(feature = "test-support")]
#[async_trait]
impl<D: Dialect> TestSupport for Db<D> {
    async fn set_reimbursement_state(&self, receipt_id: Uuid, state: ReimbursementState) -> Result<()> {
        let changed = Sql::new("UPDATE receipts SET reimbursement_state = $2, updated_at = $3 WHERE id = $1")
            .bind(receipt_id)
            .bind(state.as_str())
            .bind(Timestamp::now())
            .execute(&mut *self.d.writer().await?)
            .await?;
        if changed == 0 {
            return Err(StoreError::NotFound(crate::Entity::Receipt));
        }
        Ok(())
    }
}
