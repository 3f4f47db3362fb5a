// Package shares is the key-sharing library of a p2pkey node: everything
// about a share from the moment K is split to the moment it is put back
// together, except the decision of who may do what.
//
// It owns:
//
//   - Split and Combine: Shamir's Secret Sharing of K with
//     hashicorp/vault/shamir, threshold 2 or more. A split of one share, or
//     of threshold 1, would make every share K itself: Split refuses it with
//     ErrThresholdTooLow, and Seal and Combine refuse such a share (rule K1:
//     a cluster of one is unescrowed and keeps K in memory only).
//   - Split IDs: each split of an owner's K is named by a random
//     generations.SplitID (NewSplitID). Every envelope and every receipt
//     names its split, so the ledger can count one split's shares only; the
//     zero ID is invalid everywhere (ErrZeroSplit).
//   - Envelopes: Seal and Open. A share is sealed by its owner with
//     XChaCha20-Poly1305 under a key derived (HKDF-SHA256) from the owner's
//     Ed25519 identity key, the cluster ID and the owner. The associated
//     data is the whole Binding (cluster, owner, generation, holder, split),
//     so an envelope moved anywhere else does not open, and a holder,
//     lacking the owner's key, cannot open what it stores. The encoded
//     envelope (pb.Envelope, version 2, canonical) is what is stored, sent
//     and digested; version 1 envelopes, which name no split, are refused
//     with ErrEnvelopeVersion.
//   - Receipts: SignReceipt and VerifyReceipt over
//     generations.ReceiptMessage, split included. Receipts are what the
//     custody ledger records; the ledger checks them with the holder's peer
//     ID.
//   - Store: the holder's bbolt file of sealed envelopes, one per
//     (generation, owner), with a schema version. It never holds plaintext,
//     and it erases what it deletes (below).
//   - Service: the share protocol (ProtocolID, /p2pkey/shares/1.0.0), one
//     delimited protobuf request and response per stream: push (store an
//     envelope, get a receipt for its split) and fetch (get one's own
//     envelope back). The handler enforces what it can know by itself: the
//     pusher is the authenticated owner, the envelope is addressed to this
//     holder and this cluster, one envelope per (generation, owner, holder),
//     size limits, deadlines, and a per-peer fetch rate limit. Streams run
//     on package wire (Serve on the holder, Call on the owner), which does
//     the bounded, versioned reads, the resource scope and the deadline.
//   - The record of share releases: every envelope a holder stores, serves,
//     refuses or deletes is an Event, logged at INFO (owner, holder,
//     generation, split, reason), counted in Service.Stats, passed to an
//     Observer (WithObserver, for metrics) and appended to the AuditLog
//     given with WithAuditLog: JSON lines, 0600, rotated by size, read back
//     oldest first with ReadAuditLog. Events never hold share bytes or keys.
//
// # Deletion
//
// bbolt's Delete unlinks a record but leaves its bytes in a freed page of
// the file. So every Store call that deletes or replaces envelopes (Delete,
// DeleteKeys, DeleteGeneration, DeleteOwner, Replace, and a push that the
// SplitDecision lets replace a split) then rewrites the store: bbolt
// Compact copies the live records into a fresh file in the same directory,
// which is fsynced and renamed over the store (the directory is fsynced);
// then the old file is overwritten with zeros and fsynced before it is
// closed. Operations wait during the swap. Concurrent deletes share one
// rewrite; each call returns only after a rewrite that started after its
// delete committed has completed, so when Delete returns nil no file in the
// store's directory holds the deleted envelope. If the rewrite fails the
// call returns ErrNotErased (the delete itself stands), and the next delete
// call, even of nothing, tries again. A crash at any point leaves the old
// or the new store, complete: the rename is the commit point, the zeroing
// starts only after it is durable, and OpenStore removes a leftover
// temporary file. OpenStore also rewrites the store once, which erases
// envelopes whose delete committed just before a crash, and those freed by
// older versions. Cost: about 10 ms for a delete in a store of 100
// envelopes on the reference machine (BenchmarkDeleteErase), against about
// 1 ms for bbolt's Delete alone.
//
// What this does not cover: blocks the file system or the device keep
// beyond the file's contents. A journal that records data (ext4
// data=journal), copy-on-write file systems and snapshots (btrfs, ZFS),
// and SSD wear levelling or bad-block remapping may still hold old
// contents; so may the old file's blocks if the machine crashes after the
// rename and before its zeros reach the disk (they are then free blocks, in
// no file). Full-disk encryption is the answer to those.
//
// It must not:
//
//   - decide policy. Whether a generation is open, whether a peer is a
//     member or was removed, and whether a new split may replace a stored
//     one, come from the custody ledger through the Policy and the
//     SplitDecision the node passes in. The package never reads the ledger,
//     talks to Raft, or decides when to split, push, fetch or delete.
//   - keep K, or a plaintext share, anywhere but in memory, or log one.
//     Split, Combine and Open return buffers that the caller clears.
//   - own the libp2p host or the store's lifetime beyond Service.Close and
//     Store.Close.
package shares
