//! Typed views and builders of the PDUs a target reads and sends (RFC 7143
//! §11.3-§11.19), so that no code outside this module names a header offset.
//!
//! Each kind is one generic wrapper over its PDU: `DataIn<&Pdu>` reads a
//! received or built PDU, `DataIn<Pdu>` (the default) builds one to send,
//! `DataIn<&mut Pdu>` edits one in place. Every getter and setter is an
//! inlined load or store at a fixed place of the 48-byte Basic Header
//! Segment, so a view costs nothing over indexing the bytes by hand. Field
//! names are the RFC's.

mod command;
mod login;
mod session;
mod task;

pub use command::{CommandResponse, DataIn, DataOut, R2t, ScsiCommand, ScsiResponse};
pub use login::{LoginRequest, LoginResponse};
pub use session::{
    AsyncMessage, LogoutRequest, LogoutResponse, LogoutResponseCode, NopIn, NopOut, Reject,
    RejectReason, TextRequest, TextResponse,
};
pub use task::{TaskFunction, TaskMgmtRequest, TaskMgmtResponse, TaskResponse};

use crate::pdu::BHS_LEN;

/// The reserved tag value (0xffffffff): an Initiator Task Tag that answers
/// nothing, or a Target Transfer Tag that asks for no answer.
pub const RESERVED_TAG: u32 = 0xFFFF_FFFF;

/// A fixed-size field of the Basic Header Segment, big-endian on the wire.
trait Field: Copy {
    fn load(bhs: &[u8; BHS_LEN], at: usize) -> Self;
    fn store(self, bhs: &mut [u8; BHS_LEN], at: usize);
}

impl Field for u8 {
    #[inline]
    fn load(bhs: &[u8; BHS_LEN], at: usize) -> Self {
        bhs[at]
    }
    #[inline]
    fn store(self, bhs: &mut [u8; BHS_LEN], at: usize) {
        bhs[at] = self;
    }
}

impl Field for u16 {
    #[inline]
    fn load(bhs: &[u8; BHS_LEN], at: usize) -> Self {
        u16::from_be_bytes([bhs[at], bhs[at + 1]])
    }
    #[inline]
    fn store(self, bhs: &mut [u8; BHS_LEN], at: usize) {
        bhs[at..at + 2].copy_from_slice(&self.to_be_bytes());
    }
}

impl Field for u32 {
    #[inline]
    fn load(bhs: &[u8; BHS_LEN], at: usize) -> Self {
        u32::from_be_bytes([bhs[at], bhs[at + 1], bhs[at + 2], bhs[at + 3]])
    }
    #[inline]
    fn store(self, bhs: &mut [u8; BHS_LEN], at: usize) {
        bhs[at..at + 4].copy_from_slice(&self.to_be_bytes());
    }
}

impl<const N: usize> Field for [u8; N] {
    #[inline]
    fn load(bhs: &[u8; BHS_LEN], at: usize) -> Self {
        let mut v = [0u8; N];
        v.copy_from_slice(&bhs[at..at + N]);
        v
    }
    #[inline]
    fn store(self, bhs: &mut [u8; BHS_LEN], at: usize) {
        bhs[at..at + N].copy_from_slice(&self);
    }
}

/// Declares one PDU kind: the wrapper, its constructors, and a getter and a
/// setter per field (`name / set_name: type = offset`) and per flag bit
/// (`name / set_name = (byte, mask)`). `new` starts from an all-zero BHS
/// with the opcode, byte 1 set to `flags` and the ITT set to `itt`: the
/// values RFC 7143 fixes for this kind.
macro_rules! pdu_kind {
    (
        $(#[$meta:meta])*
        $name:ident = $opcode:ident, new(flags: $flags:expr, itt: $itt:expr);
        fields { $( $(#[$fdoc:meta])* $get:ident / $set:ident : $ty:ty = $at:literal; )* }
        bits { $( $(#[$bdoc:meta])* $bget:ident / $bset:ident = ($byte:literal, $mask:literal); )* }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name<P = $crate::pdu::Pdu>(P);

        impl $name<$crate::pdu::Pdu> {
            #[doc = concat!("A ", stringify!($name), " PDU with every field zero but those RFC 7143 fixes.")]
            #[inline]
            pub fn new() -> Self {
                let mut p = $crate::pdu::Pdu::new($crate::pdu::Opcode::$opcode);
                p.bhs[1] = $flags;
                p.set_itt($itt);
                $name(p)
            }
        }

        impl Default for $name<$crate::pdu::Pdu> {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<$name<$crate::pdu::Pdu>> for $crate::pdu::Pdu {
            #[inline]
            fn from(v: $name<$crate::pdu::Pdu>) -> $crate::pdu::Pdu {
                v.0
            }
        }

        impl<P: AsRef<$crate::pdu::Pdu>> $name<P> {
            #[doc = concat!("Reads `pdu` as a ", stringify!($name), " PDU; the caller has dispatched on its opcode.")]
            #[inline]
            pub fn view(pdu: P) -> Self {
                debug_assert_eq!(
                    pdu.as_ref().opcode(),
                    Some($crate::pdu::Opcode::$opcode),
                    "viewed as the wrong kind of PDU"
                );
                $name(pdu)
            }

            /// Reads `pdu` at this kind's layout whatever its opcode, for
            /// answering a PDU that came in where this kind was expected.
            #[allow(dead_code)]
            #[inline]
            pub(crate) fn at_layout(pdu: P) -> Self {
                $name(pdu)
            }

            /// The PDU underneath.
            #[inline]
            pub fn pdu(&self) -> &$crate::pdu::Pdu {
                self.0.as_ref()
            }

            /// Gives back what the view wraps.
            #[inline]
            pub fn into_inner(self) -> P {
                self.0
            }

            $(
                $(#[$fdoc])*
                #[inline]
                pub fn $get(&self) -> $ty {
                    <$ty as $crate::views::Field>::load(&self.pdu().bhs, $at)
                }
            )*

            $(
                $(#[$bdoc])*
                #[inline]
                pub fn $bget(&self) -> bool {
                    self.pdu().bhs[$byte] & $mask != 0
                }
            )*
        }

        impl<P: AsMut<$crate::pdu::Pdu>> $name<P> {
            /// The PDU underneath, to set its data segment.
            #[inline]
            pub fn pdu_mut(&mut self) -> &mut $crate::pdu::Pdu {
                self.0.as_mut()
            }

            $(
                #[doc = concat!("Sets [`", stringify!($get), "`](Self::", stringify!($get), ").")]
                #[inline]
                pub fn $set(&mut self, v: $ty) {
                    $crate::views::Field::store(v, &mut self.0.as_mut().bhs, $at)
                }
            )*

            $(
                #[doc = concat!("Sets or clears [`", stringify!($bget), "`](Self::", stringify!($bget), ").")]
                #[inline]
                pub fn $bset(&mut self, on: bool) {
                    let b = &mut self.0.as_mut().bhs[$byte];
                    if on {
                        *b |= $mask;
                    } else {
                        *b &= !$mask;
                    }
                }
            )*
        }
    };
}

pub(crate) use pdu_kind;

/// Declares a one-byte code field (RFC 7143 names them Response, Reason,
/// Function) as an enum with its decoding.
macro_rules! code_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $( $(#[$vdoc:meta])* $variant:ident = $value:literal, )* }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum $name {
            $( $(#[$vdoc])* $variant = $value, )*
        }

        impl $name {
            /// Decodes the code; `None` for a value RFC 7143 does not define.
            pub fn from_u8(v: u8) -> Option<$name> {
                match v {
                    $( $value => Some($name::$variant), )*
                    _ => None,
                }
            }
        }
    };
}

pub(crate) use code_enum;

#[cfg(test)]
pub(crate) mod testing {
    use crate::pdu::{Digests, Pdu};

    /// Encodes `p`, parses the bytes back, and returns what was parsed: the
    /// PDU a peer would see.
    pub fn wire(p: impl Into<Pdu>) -> Pdu {
        let mut p = p.into();
        let d = Digests {
            header: true,
            data: true,
        };
        let bytes = p.encode(d);
        let (back, used) = Pdu::parse(&bytes, d, 1 << 24).expect("parses");
        assert_eq!(used, bytes.len());
        back
    }

    /// Offsets of the BHS bytes that are not zero.
    pub fn set_bytes(p: &Pdu) -> Vec<usize> {
        (0..p.bhs.len()).filter(|&i| p.bhs[i] != 0).collect()
    }
}
