//! Data before training: bounded JSONL reading (`jsonl`) and English SFT data turned into
//! quadruples (`prepare`).

pub mod jsonl;
pub mod prepare;
