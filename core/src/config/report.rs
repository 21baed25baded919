//! Errors and warnings with their position in the file (`FILE:LINE:COL: message`).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One error (or warning) found in a configuration file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl ConfigError {
    /// An error about the file as a whole (it cannot be read, the engine cannot start).
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: 0,
            col: 0,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// All errors of one file; `check` prints each on its own line.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = src[line_start..offset].chars().count() + 1;
    (line, col)
}

/// Collects errors and warnings against one source text, turning byte spans into positions.
pub(super) struct Reporter<'a> {
    pub file: &'a Path,
    pub src: &'a str,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigError>,
}

impl<'a> Reporter<'a> {
    pub fn new(file: &'a Path, src: &'a str) -> Self {
        Reporter {
            file,
            src,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn at(&self, span: Range<usize>, message: String) -> ConfigError {
        let (line, col) = line_col(self.src, span.start);
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            message,
        }
    }

    pub fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
        let e = self.at(span, message.into());
        self.errors.push(e);
    }

    pub fn warn(&mut self, span: Range<usize>, message: impl Into<String>) {
        let e = self.at(span, format!("warning: {}", message.into()));
        self.warnings.push(e);
    }

    /// Line of a byte offset, for messages that point at another place.
    pub fn line(&self, offset: usize) -> usize {
        line_col(self.src, offset).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_chars() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\nx", 3), (2, 1));
    }
}
