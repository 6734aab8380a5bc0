//! The BankAccount aggregate of `aggregates/banking-account.yaml`.

use std::collections::BTreeMap;

use prost::Message as _;
use saga_eventstore::{Aggregate, DecodeError, DomainError, DomainEvent, Upcasters};
use saga_proto::es as pb;
use serde::{Deserialize, Serialize};

use crate::money::Money;

/// The aggregate type (`aggregateRoot`).
pub const BANK_ACCOUNT: &str = "BankAccount";
/// Invariant: a withdrawal never takes the balance below zero.
pub const BALANCE_NOT_NEGATIVE: &str = "Balance cannot be negative";
/// Invariant: one transaction id is one transaction.
pub const TRANSACTION_ID_UNIQUE: &str = "TransactionId must be unique (idempotency)";
/// Currency of deposits stored before `MoneyDeposited` v2 carried one.
pub const DEFAULT_CURRENCY: &str = "EUR";

/// What a bank account is asked to do. Times are milliseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BankCommand {
    /// Opens the account with an initial balance.
    Open {
        /// Account id.
        account_id: String,
        /// Owner.
        customer_id: String,
        /// Opening balance (not negative).
        initial_balance: Money,
        /// When.
        at: u64,
    },
    /// Adds money.
    Deposit {
        /// Unique per transaction: a repeated id returns the first result.
        transaction_id: String,
        /// More than zero.
        amount: Money,
        /// Empty for the default currency.
        currency: String,
        /// When.
        at: u64,
    },
    /// Takes money out, if the balance allows.
    Withdraw {
        /// Unique per transaction.
        transaction_id: String,
        /// More than zero.
        amount: Money,
        /// When.
        at: u64,
    },
}

/// What happened to a bank account.
#[derive(Debug, Clone, PartialEq)]
pub enum BankEvent {
    /// `AccountOpened`.
    Opened(pb::AccountOpened),
    /// `MoneyDeposited`.
    Deposited(pb::MoneyDeposited),
    /// `MoneyWithdrawn`.
    Withdrawn(pb::MoneyWithdrawn),
}

impl DomainEvent for BankEvent {
    fn event_type(&self) -> &'static str {
        match self {
            BankEvent::Opened(_) => "AccountOpened",
            BankEvent::Deposited(_) => "MoneyDeposited",
            BankEvent::Withdrawn(_) => "MoneyWithdrawn",
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            BankEvent::Opened(e) => e.encode_to_vec(),
            BankEvent::Deposited(e) => e.encode_to_vec(),
            BankEvent::Withdrawn(e) => e.encode_to_vec(),
        }
    }

    fn decode(event_type: &str, payload: &[u8]) -> Result<Self, DecodeError> {
        let err = |e: prost::DecodeError| DecodeError {
            event_type: event_type.to_string(),
            message: e.to_string(),
        };
        Ok(match event_type {
            "AccountOpened" => BankEvent::Opened(pb::AccountOpened::decode(payload).map_err(err)?),
            "MoneyDeposited" => {
                BankEvent::Deposited(pb::MoneyDeposited::decode(payload).map_err(err)?)
            }
            "MoneyWithdrawn" => {
                BankEvent::Withdrawn(pb::MoneyWithdrawn::decode(payload).map_err(err)?)
            }
            other => {
                return Err(DecodeError {
                    event_type: other.to_string(),
                    message: "not an event of BankAccount".into(),
                })
            }
        })
    }
}

/// Kind of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransactionKind {
    /// Money in.
    Deposit,
    /// Money out.
    Withdrawal,
}

/// A transaction as the account remembers it (for idempotent repeats).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// In or out.
    pub kind: TransactionKind,
    /// How much.
    pub amount: Money,
    /// Currency of a deposit.
    pub currency: String,
    /// The balance right after it.
    pub balance_after: Money,
}

/// A bank account's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankAccount {
    /// Account id (empty until opened).
    pub account_id: String,
    /// Owner.
    pub customer_id: String,
    /// Current balance.
    pub balance: Money,
    /// Every transaction, by id.
    pub transactions: BTreeMap<String, Transaction>,
}

fn money(text: &str) -> Money {
    // Events are validated when decided; a stored amount that does not parse is 0
    // rather than a crash of every reader.
    text.parse().unwrap_or_default()
}

impl BankAccount {
    /// Whether the account was opened.
    pub fn is_open(&self) -> bool {
        !self.account_id.is_empty()
    }

    fn repeat(
        &self,
        transaction_id: &str,
        kind: TransactionKind,
        amount: Money,
    ) -> Option<Result<Vec<BankEvent>, DomainError>> {
        let t = self.transactions.get(transaction_id)?;
        if t.kind == kind && t.amount == amount {
            return Some(Ok(Vec::new()));
        }
        Some(Err(DomainError::invariant(
            TRANSACTION_ID_UNIQUE,
            format!(
                "transaction `{transaction_id}` was a {:?} of {}, not a {kind:?} of {amount}",
                t.kind, t.amount
            ),
        )))
    }
}

impl Aggregate for BankAccount {
    const TYPE: &'static str = BANK_ACCOUNT;
    type Command = BankCommand;
    type Event = BankEvent;

    fn handle(&self, command: BankCommand) -> Result<Vec<BankEvent>, DomainError> {
        match command {
            BankCommand::Open {
                account_id,
                customer_id,
                initial_balance,
                at,
            } => {
                if self.is_open() {
                    if self.customer_id == customer_id {
                        return Ok(Vec::new());
                    }
                    return Err(DomainError::rejected(format!(
                        "account `{account_id}` is already open for customer `{}`",
                        self.customer_id
                    )));
                }
                if initial_balance < Money(0) {
                    return Err(DomainError::invariant(
                        BALANCE_NOT_NEGATIVE,
                        format!("initial balance {initial_balance} is negative"),
                    ));
                }
                Ok(vec![BankEvent::Opened(pb::AccountOpened {
                    account_id,
                    customer_id,
                    initial_balance: initial_balance.to_string(),
                    opened_at: at,
                })])
            }
            BankCommand::Deposit {
                transaction_id,
                amount,
                currency,
                at,
            } => {
                if !self.is_open() {
                    return Err(DomainError::rejected("the account is not open"));
                }
                if let Some(r) = self.repeat(&transaction_id, TransactionKind::Deposit, amount) {
                    return r;
                }
                if amount <= Money(0) {
                    return Err(DomainError::rejected(format!(
                        "a deposit must be more than 0, not {amount}"
                    )));
                }
                Ok(vec![BankEvent::Deposited(pb::MoneyDeposited {
                    account_id: self.account_id.clone(),
                    amount: amount.to_string(),
                    transaction_id,
                    deposited_at: at,
                    currency,
                })])
            }
            BankCommand::Withdraw {
                transaction_id,
                amount,
                at,
            } => {
                if !self.is_open() {
                    return Err(DomainError::rejected("the account is not open"));
                }
                if let Some(r) = self.repeat(&transaction_id, TransactionKind::Withdrawal, amount) {
                    return r;
                }
                if amount <= Money(0) {
                    return Err(DomainError::rejected(format!(
                        "a withdrawal must be more than 0, not {amount}"
                    )));
                }
                if amount > self.balance {
                    return Err(DomainError::invariant(
                        BALANCE_NOT_NEGATIVE,
                        format!(
                            "balance {} is less than the withdrawal of {amount}",
                            self.balance
                        ),
                    ));
                }
                Ok(vec![BankEvent::Withdrawn(pb::MoneyWithdrawn {
                    account_id: self.account_id.clone(),
                    amount: amount.to_string(),
                    transaction_id,
                    withdrawn_at: at,
                })])
            }
        }
    }

    fn apply(&mut self, event: &BankEvent) {
        match event {
            BankEvent::Opened(e) => {
                self.account_id = e.account_id.clone();
                self.customer_id = e.customer_id.clone();
                self.balance = money(&e.initial_balance);
            }
            BankEvent::Deposited(e) => {
                let amount = money(&e.amount);
                self.balance = Money(self.balance.0 + amount.0);
                let currency = if e.currency.is_empty() {
                    DEFAULT_CURRENCY.to_string()
                } else {
                    e.currency.clone()
                };
                self.transactions.insert(
                    e.transaction_id.clone(),
                    Transaction {
                        kind: TransactionKind::Deposit,
                        amount,
                        currency,
                        balance_after: self.balance,
                    },
                );
            }
            BankEvent::Withdrawn(e) => {
                let amount = money(&e.amount);
                self.balance = Money(self.balance.0 - amount.0);
                self.transactions.insert(
                    e.transaction_id.clone(),
                    Transaction {
                        kind: TransactionKind::Withdrawal,
                        amount,
                        currency: String::new(),
                        balance_after: self.balance,
                    },
                );
            }
        }
    }

    fn event_id(&self, event: &BankEvent) -> Option<String> {
        Some(match event {
            BankEvent::Opened(e) => format!("opened-{}", e.customer_id),
            BankEvent::Deposited(e) => format!("tx-{}", e.transaction_id),
            BankEvent::Withdrawn(e) => format!("tx-{}", e.transaction_id),
        })
    }
}

/// The upcasters of BankAccount: `MoneyDeposited` v1 -> v2 adds `currency`
/// ([`DEFAULT_CURRENCY`] for deposits made before it existed).
pub fn upcasters() -> Upcasters {
    Upcasters::new().register("MoneyDeposited", 1, |payload| {
        let mut e = pb::MoneyDeposited::decode(payload)?;
        if e.currency.is_empty() {
            e.currency = DEFAULT_CURRENCY.to_string();
        }
        Ok(e.encode_to_vec())
    })
}
