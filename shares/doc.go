// Package shares is the key-sharing library of a p2pkey node: everything
// about a share from the moment K is split to the moment it is put back
// together, except the decision of who may do what.
//
// It owns:
//
//   - Split and Combine: Shamir's Secret Sharing of K with
//     hashicorp/vault/shamir, plus the threshold-1 case shamir refuses
//     (a one-member generation), where every share is K itself.
//   - Envelopes: Seal and Open. A share is sealed by its owner with
//     XChaCha20-Poly1305 under a key derived (HKDF-SHA256) from the owner's
//     Ed25519 identity key, the cluster ID and the owner. The associated
//     data is the whole Binding (cluster, owner, generation, holder), so an
//     envelope moved anywhere else does not open, and a holder, lacking the
//     owner's key, cannot open what it stores. The encoded envelope
//     (pb.Envelope, versioned, canonical) is what is stored, sent and
//     digested.
//   - Receipts: SignReceipt and VerifyReceipt over
//     generations.ReceiptMessage. Receipts are what the custody ledger
//     records; the ledger checks them with the holder's peer ID.
//   - Store: the holder's bbolt file of sealed envelopes, one per
//     (generation, owner), with a schema version. It never holds plaintext.
//   - Service: the share protocol (ProtocolID, /p2pkey/shares/1.0.0), one
//     delimited protobuf request and response per stream: push (store an
//     envelope, get a receipt) and fetch (get one's own envelope back).
//     The handler enforces what it can know by itself: the pusher is the
//     authenticated owner, the envelope is addressed to this holder and
//     this cluster, one envelope per (generation, owner, holder), size
//     limits, deadlines, and a per-peer fetch rate limit.
//
// It must not:
//
//   - decide policy. Whether a generation is open, whether a peer is a
//     member or was removed, comes from the custody ledger through the
//     Policy the node passes in. The package never reads the ledger, talks
//     to Raft, or decides when to split, push, fetch or delete.
//   - keep K, or a plaintext share, anywhere but in memory, or log one.
//     Split, Combine and Open return buffers that the caller clears.
//   - own the libp2p host or the store's lifetime beyond Service.Close and
//     Store.Close.
package shares
