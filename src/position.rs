//! Stream positions: `<epoch>-<seq>`, the `id:` of every SSE event and the value of `Last-Event-ID`.
//!
//! `epoch` is 8 lowercase hex digits naming one event log (it changes only when the log is recreated or
//! restored); `seq` is the dense, commit-ordered number the relay gave the event.

use std::fmt;
use std::str::FromStr;

/// Names one event log. Stored in `stream_meta.epoch` as 8 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch(pub u32);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl FromStr for Epoch {
    type Err = PositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let well_formed = s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !well_formed {
            return Err(PositionError::Epoch);
        }
        u32::from_str_radix(s, 16).map(Epoch).map_err(|_| PositionError::Epoch)
    }
}

/// A point in the event log: "every event after this one" when used to resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// The log's incarnation: a new epoch means a recreated or restored log, whose seqs name other events.
    pub epoch: Epoch,
    /// The event's sequence number in its epoch: dense, from 1 (0 is "before the first event").
    pub seq: i64,
}

impl Position {
    /// The position `<epoch>-<seq>`.
    pub fn new(epoch: Epoch, seq: i64) -> Self {
        Self { epoch, seq }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

/// Why a position string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    /// No `-` between an epoch and a seq.
    #[error("a position is <epoch>-<seq>, for example 7f3a9c21-1042")]
    Shape,
    /// The epoch is not 8 lowercase hex digits.
    #[error("the epoch of a position is 8 lowercase hex digits")]
    Epoch,
    /// The seq is not a non-negative decimal that fits in 63 bits.
    #[error("the seq of a position is a non-negative decimal integer")]
    Seq,
}

impl FromStr for Position {
    type Err = PositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (epoch, seq) = s.split_once('-').ok_or(PositionError::Shape)?;
        let epoch = epoch.parse()?;
        let well_formed = !seq.is_empty() && seq.len() <= 19 && seq.bytes().all(|b| b.is_ascii_digit());
        if !well_formed {
            return Err(PositionError::Seq);
        }
        let seq = seq.parse::<i64>().map_err(|_| PositionError::Seq)?;
        Ok(Position { epoch, seq })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_contract_example() {
        let p: Position = "7f3a9c21-1042".parse().unwrap();
        assert_eq!(p, Position::new(Epoch(0x7f3a9c21), 1042));
        assert_eq!(p.to_string(), "7f3a9c21-1042");
    }

    #[test]
    fn keeps_leading_zeros_of_the_epoch() {
        assert_eq!(Position::new(Epoch(0xab), 0).to_string(), "000000ab-0");
    }

    #[test]
    fn rejects_malformed_positions() {
        for bad in [
            "",
            "-",
            "7f3a9c21",
            "7f3a9c21-",
            "7F3A9C21-1",
            "7f3a9c2-1",
            "7f3a9c211-1",
            "zzzzzzzz-1",
            "7f3a9c21--1",
            "7f3a9c21-+1",
            "7f3a9c21-1.5",
            "7f3a9c21-1 ",
            " 7f3a9c21-1",
            "7f3a9c21-99999999999999999999",
            "7f3a9c21-1-2",
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?} should be rejected");
        }
    }

    mod fuzz {
        use super::super::*;
        use proptest::prelude::*;

        /// Every input is either a position that prints back exactly as given, or refused with a reason.
        fn check(s: &str) -> Result<(), TestCaseError> {
            match s.parse::<Position>() {
                Ok(p) => prop_assert_eq!(p.to_string(), s),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
            Ok(())
        }

        proptest! {
            // 4096 cases, or PROPTEST_CASES (proptest applies its environment variables over this
            // configuration); a failure prints its shrunk input and is not saved to a file (docs/fuzzing.md).
            #![proptest_config(proptest::test_runner::contextualize_config(ProptestConfig {
                failure_persistence: None,
                ..ProptestConfig::with_cases(4096)
            }))]

            #[test]
            fn any_text_is_a_position_that_prints_back_or_refused(s in any::<String>()) {
                check(&s)?;
            }

            #[test]
            fn near_misses_are_a_position_that_prints_back_or_refused(
                s in "[0-9a-fA-Fx +]{0,10}-{0,2}[0-9+ a-f-]{0,22}"
            ) {
                check(&s)?;
            }

            #[test]
            fn every_position_round_trips(epoch in any::<u32>(), seq in 0i64..=i64::MAX) {
                let p = Position::new(Epoch(epoch), seq);
                prop_assert_eq!(p.to_string().parse::<Position>(), Ok(p));
            }
        }
    }
}
