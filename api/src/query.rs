//! Query-string parameters more than one resource's routes take (`?wait=`, `?plan=`).
//! A resource's own listing filters stay with its handlers.

use serde::Deserialize;
use utoipa::IntoParams;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Hold the request until the job is final or this many seconds (0–300) pass.
    pub wait: Option<f64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BatchQuery {
    /// `true`: plan every item (a `plan` job each: a dry run that changes nothing; no
    /// confirmation header; viewers may ask). Default false: restore them.
    pub plan: Option<bool>,
}
