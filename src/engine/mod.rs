//! The MQL decision, pure (being written).
