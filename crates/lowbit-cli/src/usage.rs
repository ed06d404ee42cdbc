//! Errors with their own exit status: usage errors (arguments that parse but make no sense
//! together, exit 2), a quantized model that failed validation (exit 4), a run that quantized
//! almost nothing (exit 5) and a model that breaks its target's rules (`check`, exit 6).

use std::fmt;

/// An error type that is its message.
macro_rules! message_error {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name(pub String);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::error::Error for $name {}
    };
}

message_error!(
    /// An error in how lowbit was called, as opposed to one in the files it was given.
    UsageError
);
message_error!(
    /// A quantized model that failed the validation gate; `main` exits 4 on it.
    ValidationFailed
);
message_error!(
    /// A quantization run that quantized (almost) nothing; `main` exits 5 on it.
    PartialQuantization
);
message_error!(
    /// `check` found a rule the target runtime enforces broken; `main` exits 6 on it.
    RulesBroken
);

/// Whether `e` is a usage error: a [`UsageError`], or a library's error that says it is one.
pub fn is_usage(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<UsageError>().is_some()
            || c.downcast_ref::<lowbit_data::DataError>().is_some_and(|d| d.is_usage())
    })
}

/// Returns early with a [`UsageError`].
macro_rules! usage_bail {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::usage::UsageError(format!($($arg)*))))
    };
}
pub(crate) use usage_bail;
