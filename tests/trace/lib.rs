//! End-to-end tests across every scaleout process at once; the tests are in `tests/`.
