//! The wire format between the server and a supervisor: length-prefixed JSON frames over a unix socket.

use std::io::{self, Read, Write};

use serde::{de::DeserializeOwned, Serialize};

/// Upper bound of one frame; a run's outcome is capped well below it (output and plot caps).
pub const MAX_FRAME: usize = 128 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("reading a frame: {0}")]
    Read(#[source] io::Error),
    #[error("writing a frame: {0}")]
    Write(#[source] io::Error),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("decoding a frame: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("encoding a frame: {0}")]
    Encode(#[source] serde_json::Error),
}

/// A value as one frame: its length (u32, little-endian), then its JSON.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ProtocolError> {
    let body = serde_json::to_vec(value).map_err(ProtocolError::Encode)?;
    if body.len() > MAX_FRAME {
        return Err(ProtocolError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// The body length a frame's header announces, refused past [`MAX_FRAME`] before anything is allocated.
pub fn decode_len(header: [u8; 4]) -> Result<usize, ProtocolError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(ProtocolError::TooLarge(len));
    }
    Ok(len)
}

pub fn write_frame<T: Serialize>(w: &mut impl Write, value: &T) -> Result<(), ProtocolError> {
    w.write_all(&encode(value)?).map_err(ProtocolError::Write)
}

pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> Result<T, ProtocolError> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header).map_err(ProtocolError::Read)?;
    let mut body = vec![0u8; decode_len(header)?];
    r.read_exact(&mut body).map_err(ProtocolError::Read)?;
    serde_json::from_slice(&body).map_err(ProtocolError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &vec!["a", "b"]).unwrap();
        let back: Vec<String> = read_frame(&mut buf.as_slice()).unwrap();
        assert_eq!(back, ["a", "b"]);
    }

    #[test]
    fn oversized_header_is_rejected_before_allocating() {
        let header = (MAX_FRAME as u32 + 1).to_le_bytes();
        let err = read_frame::<String>(&mut header.as_slice()).unwrap_err();
        assert!(matches!(err, ProtocolError::TooLarge(_)));
    }

    #[test]
    fn truncated_frame_is_a_read_error() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &"hello").unwrap();
        buf.truncate(buf.len() - 1);
        assert!(matches!(
            read_frame::<String>(&mut buf.as_slice()),
            Err(ProtocolError::Read(_))
        ));
    }
}
