//! What the hub broadcasts to open streams for a delivery receipt: the hint and its SSE frame, encoded once.

use crate::receipts::ReceiptHint;

/// A receipt hint with its SSE frame (`event: receipt`, no `id:`), encoded once for every stream it reaches.
pub(crate) struct ReceiptFrame {
    pub(crate) hint: ReceiptHint,
    pub(crate) frame: bytes::Bytes,
}

impl ReceiptFrame {
    pub(crate) fn new(hint: ReceiptHint) -> Self {
        let data = hint.data();
        let frame = super::frame::Frame { event: Some("receipt"), data: Some(&data), ..Default::default() }.encode();
        Self { hint, frame }
    }
}

/// Receipt hints a stream may have unread before it lags (and is told its receipts are stale).
pub(crate) const RECEIPT_HINTS_QUEUED: usize = 1024;
