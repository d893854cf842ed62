//! Stop strings over streamed text: text that might be the start of a stop string is held
//! back until the next pieces show whether it is one, so a stop string never reaches the
//! client, even in part.

pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), held: String::new() }
    }

    /// Adds generated text; returns the text that is safe to send and whether a stop string
    /// was reached (the text before it is returned; it and anything after are dropped).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.held.push_str(piece);
        let first = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(at) = first {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        // Keep the longest tail of `held` that begins some stop string.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.held[i..])))
            .unwrap_or(self.held.len());
        let out = self.held[..keep].to_string();
        self.held.drain(..keep);
        (out, false)
    }

    /// The text still held back, once generation ended without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::StopMatcher;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut out = String::new();
        for p in pieces {
            let (o, hit) = m.push(p);
            out += &o;
            if hit {
                return (out, true);
            }
        }
        out += &m.finish();
        (out, false)
    }

    #[test]
    fn stop_split_across_pieces_is_never_sent() {
        assert_eq!(run(&["\n\nUser:"], &["Hello", "\n", "\nUs", "er:", " more"]), ("Hello".into(), true));
    }

    #[test]
    fn a_false_start_is_released() {
        assert_eq!(run(&["END"], &["the E", "ND", "x"]), ("the ".into(), true));
        assert_eq!(run(&["END"], &["the E", "nd"]), ("the End".into(), false));
    }

    #[test]
    fn earliest_stop_wins_and_multibyte_text_is_safe() {
        assert_eq!(run(&["b", "a"], &["xéab"]), ("xé".into(), true));
        assert_eq!(run(&["é!"], &["caf", "é", "?"]), ("café?".into(), false));
    }

    #[test]
    fn no_stops_passes_everything_through() {
        let mut m = StopMatcher::new(&[]);
        assert_eq!(m.push("abc"), ("abc".into(), false));
    }
}
