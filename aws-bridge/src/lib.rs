//! Mooring's calls into real AWS APIs, for logging in with an AWS identity
//! (DESIGN.md decision 7, the HashiCorp Vault `aws` auth pattern):
//!
//! - [`sts`] forwards a client's signed `sts:GetCallerIdentity` request to STS and
//!   reads who signed it. It needs no SDK: the request is already signed.
//! - [`iam`] reads the identity policies of an AWS role or user with `aws-sdk-iam`,
//!   so that they can be imported into Mooring.
//!
//! This crate knows nothing of Mooring's store or policy grammar: it fetches and
//! reports. It lives apart from the control plane because the AWS SDK takes many
//! minutes to build; editing the control plane never rebuilds it.

pub mod iam;
pub mod sts;
pub mod xml;
