package generations

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/p2pkey/p2pkey/generations/pb"
)

func seedCorpus(f *testing.F) {
	h, ids := cluster(f, 3)
	d := keys(f, 4)[3].id
	cmds := [][]byte{}
	add := func(b []byte, err error) {
		if err == nil {
			cmds = append(cmds, b)
		}
	}
	sign := func(c *pb.Command) *pb.Command {
		h.sign(c, h.naturalAuthor(c))
		return c
	}
	add(EncodeCommand(sign(NewAddInvite(inviteHash(9), invitePub(9), h.now.Add(time.Hour), ids[0], h.now))))
	add(EncodeCommand(sign(NewConsumeInvite(inviteHash(9), d, testCluster, h.now.Add(time.Minute), h.now))))
	add(EncodeCommand(sign(NewConsumeInviteWithAddrs(inviteHash(9), d, testCluster, []string{"/ip4/1.2.3.4/tcp/1"}, h.now.Add(time.Minute), h.now))))
	add(EncodeCommand(sign(NewOpenGeneration(h.now.Add(time.Minute), h.now))))
	add(EncodeCommand(sign(NewRecordReceipts(h.fullReceipts(2, ids)[:3], h.now))))
	add(EncodeCommand(sign(NewAbortGeneration(2, h.now.Add(time.Hour)))))
	add(EncodeCommand(sign(NewRetireGeneration(1, h.now))))
	add(EncodeCommand(sign(NewRemoveMember(ids[1], h.now.Add(time.Minute), h.now))))
	add(EncodeCommand(sign(NewVote(ids[1], false, h.now.Add(time.Minute), h.now))))
	add(EncodeCommand(sign(NewVote(ids[1], true, h.now.Add(time.Minute), h.now))))
	add(EncodeCommand(sign(NewSetAddrs(ids[1], []string{"/ip4/1.2.3.4/tcp/1"}, h.now))))
	add(EncodeCommand(sign(NewRecordKeyCheck(ids[1], []byte("kc"), h.now))))
	add(EncodeCommand(sign(NewBootstrap(testCluster, d, h.now))))
	add(EncodeCommand(sign(NewBootstrapWithRetention(testCluster, d, 2, h.now))))
	add(EncodeCommand(sign(NewSetRetention(1, ids[0], h.now))))
	add(EncodeCommand(sign(NewSetRetention(9, ids[0], h.now))))
	for _, e := range h.log {
		cmds = append(cmds, e.cmd)
	}
	for _, c := range cmds {
		f.Add(c)
	}
	f.Add([]byte{})
	f.Add([]byte{0x08, 0x01})
}

func FuzzDecodeCommand(f *testing.F) {
	seedCorpus(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		cmd, err := DecodeCommand(data)
		if err != nil {
			if ErrorCode(err) == "" {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		// A valid command re-encodes to something that decodes to the same.
		b, err := EncodeCommand(cmd)
		if err != nil {
			t.Fatalf("valid command does not re-encode: %v", err)
		}
		cmd2, err := DecodeCommand(b)
		if err != nil || !proto.Equal(cmd, cmd2) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

func FuzzApply(f *testing.F) {
	seedCorpus(f)
	// Build the seeded cluster once; every input is applied to a fresh copy
	// restored from its snapshot.
	h, _ := cluster(f, 3)
	base, err := h.l.Snapshot()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		l := New()
		if err := l.Restore(base); err != nil {
			t.Fatal(err)
		}
		stamp := h.now.UnixNano()
		_, err := l.Apply(stamp, data)
		after, serr := l.Snapshot()
		if serr != nil {
			t.Fatal(serr)
		}
		if err != nil {
			if ErrorCode(err) == "" || errors.Is(err, ErrInternal) {
				t.Fatalf("bad error: %v", err)
			}
			if !bytes.Equal(after, base) {
				t.Fatalf("rejected command changed the state: %v", err)
			}
			return
		}
		// An applied command leaves a restorable, deterministic state.
		r := New()
		if err := r.Restore(after); err != nil {
			t.Fatalf("state after apply does not restore: %v", err)
		}
		if again, _ := r.Snapshot(); !bytes.Equal(again, after) {
			t.Fatal("snapshot not stable across restore")
		}
		// And the same input on another copy gives the same state.
		l2 := New()
		_ = l2.Restore(base)
		_, _ = l2.Apply(stamp, data)
		if s2, _ := l2.Snapshot(); !bytes.Equal(s2, after) {
			t.Fatal("apply not deterministic")
		}
	})
}
