//! The engine: the use cases of Palisade above the storage backends. What a write does to a
//! rule is decided here ([`merge`]), once, whatever the backend.

pub mod merge;
