//! The read models of BankAccount: `AccountBalanceView` (`read_db.account_balance`) and
//! `TransactionHistoryView` (`read_db.transaction_history`).

use prost::Message as _;
use saga_eventstore::{ErrorKind, EsError, Projection, RecordedEvent, ViewStore, ViewTx};
use saga_proto::es as pb;
use serde::{Deserialize, Serialize};

use crate::bank::DEFAULT_CURRENCY;
use crate::money::Money;

/// Name of the balance view.
pub const ACCOUNT_BALANCE_VIEW: &str = "AccountBalanceView";
/// Name of the history view.
pub const TRANSACTION_HISTORY_VIEW: &str = "TransactionHistoryView";

/// A row of `AccountBalanceView`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountBalance {
    /// Account.
    pub account_id: String,
    /// Owner.
    pub customer_id: String,
    /// Balance after the last event applied.
    pub balance: Money,
    /// Version of that event in the account's stream.
    pub version: u64,
    /// Its timestamp.
    pub updated_at: u64,
}

/// A row of `TransactionHistoryView`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Account.
    pub account_id: String,
    /// Transaction id.
    pub transaction_id: String,
    /// `deposit` or `withdrawal`.
    pub kind: String,
    /// Amount.
    pub amount: Money,
    /// Currency of a deposit.
    pub currency: String,
    /// Version of the event in the account's stream.
    pub version: u64,
    /// When.
    pub at: u64,
}

fn corrupt(e: impl std::fmt::Display, event: &RecordedEvent) -> EsError {
    EsError::new(
        ErrorKind::Corrupt,
        format!("event {} of {}: {e}", event.version, event.stream),
    )
}

fn amount(text: &str, event: &RecordedEvent) -> Result<Money, EsError> {
    text.parse().map_err(|e| corrupt(e, event))
}

/// Balance per account.
#[derive(Debug)]
pub struct AccountBalanceView {
    sources: Vec<String>,
}

impl Default for AccountBalanceView {
    fn default() -> Self {
        Self {
            sources: ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn"]
                .map(String::from)
                .to_vec(),
        }
    }
}

#[async_trait::async_trait]
impl Projection for AccountBalanceView {
    fn name(&self) -> &str {
        ACCOUNT_BALANCE_VIEW
    }

    fn sources(&self) -> &[String] {
        &self.sources
    }

    async fn apply(&self, view: &mut dyn ViewTx, event: &RecordedEvent) -> Result<(), EsError> {
        let key = event.stream.id().as_bytes();
        let mut row = match view.get(key).await? {
            Some(v) => serde_json::from_slice(&v).map_err(|e| corrupt(e, event))?,
            None => AccountBalance {
                account_id: event.stream.id().to_string(),
                customer_id: String::new(),
                balance: Money(0),
                version: 0,
                updated_at: 0,
            },
        };
        let p = event.payload.as_slice();
        match event.event_type.as_str() {
            "AccountOpened" => {
                let e = pb::AccountOpened::decode(p).map_err(|e| corrupt(e, event))?;
                row.customer_id = e.customer_id;
                row.balance = amount(&e.initial_balance, event)?;
            }
            "MoneyDeposited" => {
                let e = pb::MoneyDeposited::decode(p).map_err(|e| corrupt(e, event))?;
                row.balance = Money(row.balance.0 + amount(&e.amount, event)?.0);
            }
            "MoneyWithdrawn" => {
                let e = pb::MoneyWithdrawn::decode(p).map_err(|e| corrupt(e, event))?;
                row.balance = Money(row.balance.0 - amount(&e.amount, event)?.0);
            }
            _ => return Ok(()),
        }
        row.version = event.version;
        row.updated_at = event.timestamp;
        view.put(
            key,
            serde_json::to_vec(&row).map_err(|e| corrupt(e, event))?,
        );
        Ok(())
    }
}

/// Deposits and withdrawals per account, in stream order.
#[derive(Debug)]
pub struct TransactionHistoryView {
    sources: Vec<String>,
}

impl Default for TransactionHistoryView {
    fn default() -> Self {
        Self {
            sources: ["MoneyDeposited", "MoneyWithdrawn"]
                .map(String::from)
                .to_vec(),
        }
    }
}

fn history_key(account: &str, version: u64) -> Vec<u8> {
    format!("{account}/{version:020}").into_bytes()
}

#[async_trait::async_trait]
impl Projection for TransactionHistoryView {
    fn name(&self) -> &str {
        TRANSACTION_HISTORY_VIEW
    }

    fn sources(&self) -> &[String] {
        &self.sources
    }

    async fn apply(&self, view: &mut dyn ViewTx, event: &RecordedEvent) -> Result<(), EsError> {
        let p = event.payload.as_slice();
        let account_id = event.stream.id().to_string();
        let entry = match event.event_type.as_str() {
            "MoneyDeposited" => {
                let e = pb::MoneyDeposited::decode(p).map_err(|e| corrupt(e, event))?;
                HistoryEntry {
                    account_id,
                    transaction_id: e.transaction_id,
                    kind: "deposit".into(),
                    amount: amount(&e.amount, event)?,
                    currency: if e.currency.is_empty() {
                        DEFAULT_CURRENCY.into()
                    } else {
                        e.currency
                    },
                    version: event.version,
                    at: event.timestamp,
                }
            }
            "MoneyWithdrawn" => {
                let e = pb::MoneyWithdrawn::decode(p).map_err(|e| corrupt(e, event))?;
                HistoryEntry {
                    account_id,
                    transaction_id: e.transaction_id,
                    kind: "withdrawal".into(),
                    amount: amount(&e.amount, event)?,
                    currency: String::new(),
                    version: event.version,
                    at: event.timestamp,
                }
            }
            _ => return Ok(()),
        };
        view.put(
            &history_key(event.stream.id(), event.version),
            serde_json::to_vec(&entry).map_err(|e| corrupt(e, event))?,
        );
        Ok(())
    }
}

/// The balance row of an account.
pub async fn account_balance(
    views: &dyn ViewStore,
    account: &str,
) -> Result<Option<AccountBalance>, EsError> {
    views
        .get(ACCOUNT_BALANCE_VIEW, account.as_bytes())
        .await?
        .map(|v| {
            serde_json::from_slice(&v)
                .map_err(|e| EsError::new(ErrorKind::Corrupt, format!("balance of {account}: {e}")))
        })
        .transpose()
}

/// One page of an account's history: entries after stream version `after`, at most
/// `limit`.
pub async fn transaction_history(
    views: &dyn ViewStore,
    account: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<HistoryEntry>, EsError> {
    let prefix = format!("{account}/").into_bytes();
    let after_key = (after > 0).then(|| history_key(account, after));
    views
        .scan(
            TRANSACTION_HISTORY_VIEW,
            &prefix,
            after_key.as_deref(),
            limit,
        )
        .await?
        .into_iter()
        .map(|(_, v)| {
            serde_json::from_slice(&v)
                .map_err(|e| EsError::new(ErrorKind::Corrupt, format!("history of {account}: {e}")))
        })
        .collect()
}
