//! Integration tests of the API server's pieces.

mod compactor;
mod registry;
