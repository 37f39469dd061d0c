//! simulate (being written)
