//! Redis broker for brook (fred). Being built under issue #5.
