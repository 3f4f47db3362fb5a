package generations

import (
	"encoding/binary"

	"github.com/libp2p/go-libp2p/core/peer"
)

// receiptDomain separates receipt signatures from every other signature a
// libp2p key makes. The trailing version is part of the signed bytes, so a
// change of format can never be confused with the old one (rule S6).
const receiptDomain = "p2pkey/receipt/v2\x00"

// SplitSize is the length of a SplitID.
const SplitSize = 16

// SplitID names one Shamir split of an owner's K: the random identifier the
// owner draws each time it splits. Every envelope and every receipt names
// its split, and the ledger counts an owner's shares in a generation for one
// split only (rule: escrowed means recoverable).
type SplitID [SplitSize]byte

// ReceiptMessage returns the exact bytes a holder signs, with its libp2p
// identity key, to acknowledge that it stores the envelope whose SHA-256
// digest is digest, for owner in generation gen of cluster clusterID.
//
// The layout is fixed and length-prefixed so that no two distinct tuples
// encode to the same bytes:
//
//	"p2pkey/receipt/v2\x00"
//	u16 len(clusterID) || clusterID
//	u64 generation (big endian)
//	u16 len(owner)     || owner (binary peer ID)
//	u16 len(holder)    || holder (binary peer ID)
//	16 bytes split
//	u16 len(digest)    || digest
func ReceiptMessage(clusterID string, gen uint64, owner, holder peer.ID, split SplitID, digest []byte) []byte {
	n := len(receiptDomain) + 2 + len(clusterID) + 8 + 2 + len(owner) + 2 + len(holder) + SplitSize + 2 + len(digest)
	b := make([]byte, 0, n)
	b = append(b, receiptDomain...)
	b = appendField(b, []byte(clusterID))
	b = binary.BigEndian.AppendUint64(b, gen)
	b = appendField(b, []byte(owner))
	b = appendField(b, []byte(holder))
	b = append(b, split[:]...)
	b = appendField(b, digest)
	return b
}

func appendField(b, f []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(f)))
	return append(b, f...)
}
