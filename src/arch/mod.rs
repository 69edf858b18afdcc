//! Architecture-specific code. ember targets x86_64 only.

pub mod x86_64;
