//! Recording fake kernel (to be written).
