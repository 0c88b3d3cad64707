//! A tenant's blocklist for enforcement points that do not ask per request.
//!
//! - [`expand`]: ASN and country rules as address ranges, cached per tenant until a rule or the
//!   geo data changes.
//! - [`ranges`]: disjoint ranges with expiries, joined from several sources.

pub mod expand;
pub mod ranges;
