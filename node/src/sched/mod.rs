//! The sans-IO chunk scheduler (API only; implementation lands next).
