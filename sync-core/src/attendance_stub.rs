use chrono::NaiveDate;
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Session {
    Am,
    Pm,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AttendanceCode {
    Present,
    G,
}
impl AttendanceCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Present => "/",
            Self::G => "G",
        }
    }
}
impl std::str::FromStr for AttendanceCode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "/" => Ok(Self::Present),
            "G" => Ok(Self::G),
            _ => Err(()),
        }
    }
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mark {
    pub date: NaiveDate,
    pub session: Session,
    pub code: AttendanceCode,
}
