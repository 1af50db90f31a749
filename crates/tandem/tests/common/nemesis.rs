//! Fault schedules (placeholder).
