//! The `RecommendationReady` event that [`generate`](super::generate) writes with each set: its type and its
//! payload (a summary of the set).

use serde_json::json;
use uuid::Uuid;

use super::set::{Recommendation, RecommendationSet};

/// The outbox event type written by [`generate`](super::generate).
pub const RECOMMENDATION_READY: &str = "RecommendationReady";
/// Entries in the event's `summary.top`.
const SUMMARY_TOP: usize = 3;

/// The `RecommendationReady` payload: `{"jobId", "summary": {"recommendationSetId", "count", "top"}}`.
pub fn event_payload(set: &RecommendationSet) -> serde_json::Value {
    payload_of(set.job_id, set.recommendation_set_id, &set.recommendations)
}

/// [`event_payload`] from the set's parts (before its `generated_at` is known).
pub(super) fn payload_of(job_id: Uuid, set_id: Uuid, recommendations: &[Recommendation]) -> serde_json::Value {
    let top: Vec<_> = recommendations
        .iter()
        .take(SUMMARY_TOP)
        .map(|r| {
            json!({
                "contractorId": r.contractor_id,
                "name": r.name,
                "score": r.score,
                "etaMinutes": r.eta_minutes,
            })
        })
        .collect();
    json!({
        "jobId": job_id,
        "summary": {
            "recommendationSetId": set_id,
            "count": recommendations.len(),
            "top": top,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recommendations::scoring::ScoreParts;
    use chrono::{TimeZone, Utc};

    #[test]
    fn sets_serialise_in_camel_case() {
        let set = RecommendationSet {
            recommendation_set_id: Uuid::nil(),
            job_id: Uuid::nil(),
            generated_at: Utc.with_ymd_and_hms(2030, 6, 10, 9, 0, 0).unwrap(),
            algorithm: "weighted-v1".into(),
            score_weights: Some(crate::recommendations::scoring::WEIGHTS),
            recommendations: vec![Recommendation {
                rank: 1,
                contractor_id: Uuid::nil(),
                name: "A".into(),
                score: 0.5,
                distance_km: 1.25,
                eta_minutes: 7,
                matched_skills: vec!["hvac".into()],
                score_parts: Some(ScoreParts { proximity: 0.5, skills: 1.0, rating: 0.8, capacity: 0.25 }),
            }],
        };
        let v = serde_json::to_value(&set).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            ["algorithm", "generatedAt", "jobId", "recommendationSetId", "recommendations", "scoreWeights"]
        );
        assert_eq!(
            v["scoreWeights"],
            serde_json::json!({"proximity": 0.45, "skills": 0.2, "rating": 0.2, "capacity": 0.15})
        );
        let r = v["recommendations"][0].as_object().unwrap();
        let mut rkeys: Vec<_> = r.keys().cloned().collect();
        rkeys.sort();
        assert_eq!(
            rkeys,
            ["contractorId", "distanceKm", "etaMinutes", "matchedSkills", "name", "rank", "score", "scoreParts"]
        );
        assert_eq!(
            r["scoreParts"],
            serde_json::json!({"proximity": 0.5, "skills": 1.0, "rating": 0.8, "capacity": 0.25})
        );
        // The event's summary is unchanged: the parts are the sheet's business (it fetches the set).
        assert_eq!(p_keys(&event_payload(&set)["summary"]["top"][0]), ["contractorId", "etaMinutes", "name", "score"]);
        let p = event_payload(&set);
        assert_eq!(p["summary"]["count"], 1);
        assert_eq!(p["summary"]["top"][0]["etaMinutes"], 7);
    }

    fn p_keys(v: &serde_json::Value) -> Vec<String> {
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    }
}
