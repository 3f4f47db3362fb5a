package node

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/node/pb"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"
)

func FuzzDecodeJoinRequest(f *testing.F) {
	var buf bytes.Buffer
	protodelim.MarshalTo(&buf, &pb.JoinRequest{Version: joinVersion, ClusterId: "c", Command: []byte{0x08, 0x02}})
	f.Add(buf.Bytes())
	f.Add([]byte{0xff, 0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := DecodeJoinRequest(bytes.NewReader(data))
		if err == nil && (req.GetVersion() != joinVersion || len(req.GetCommand()) == 0) {
			t.Fatalf("accepted a bad request: %v", req)
		}
		if err == nil {
			// The command inside is decoded by the ledger's own decoder,
			// which must refuse garbage with a sentinel.
			if _, cerr := generations.DecodeCommand(req.GetCommand()); cerr != nil && generations.ErrorCode(cerr) == "" {
				t.Fatalf("join command error without a sentinel: %v", cerr)
			}
		}
	})
}

func FuzzDecodeJoinResponse(f *testing.F) {
	var buf bytes.Buffer
	protodelim.MarshalTo(&buf, &pb.JoinResponse{Version: 1, ClusterId: "c", Members: []*pb.Peer{{Id: []byte("x"), Addrs: []string{"/ip4/1.2.3.4/tcp/1"}}}})
	f.Add(buf.Bytes())
	buf.Reset()
	pid, err := peer.Decode("12D3KooWBmSBRFJGic4fo6JFrorBF89F9BL9kFpAfpZbg9pAqkpg")
	if err != nil {
		f.Fatal(err)
	}
	id := []byte(pid)
	protodelim.MarshalTo(&buf, &pb.JoinResponse{Version: joinVersion, ClusterId: "c", Opened: &pb.OpenedGeneration{Version: openedVersion, Number: 7, Threshold: 2, Members: [][]byte{id, id, id}}})
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		resp, err := DecodeJoinResponse(bytes.NewReader(data))
		if err != nil {
			return
		}
		// Whatever the response claims, the generation it describes is
		// either refused or within bounds.
		if jg, err := decodeJoinGeneration(resp); err == nil && jg != nil {
			if jg.Threshold < 1 || jg.Threshold > len(jg.Members) || len(jg.Members) > 1024 {
				t.Fatalf("accepted a generation with %d members and threshold %d", len(jg.Members), jg.Threshold)
			}
		}
	})
}

func FuzzDecodeInvite(f *testing.F) {
	inv := Invite{ClusterID: "00112233445566778899aabbccddeeff", Secret: make([]byte, 32), ExpiresAt: time.Unix(1e9, 0), Addrs: []string{"/ip4/127.0.0.1/tcp/1/p2p/12D3KooWBmSBRFJGic4fo6JFrorBF89F9BL9kFpAfpZbg9pAqkpg"}}
	f.Add(inv.Encode())
	f.Add("p2pkey-invite-v1:")
	f.Add("garbage")
	f.Fuzz(func(t *testing.T, token string) {
		got, err := DecodeInvite(token)
		if err != nil {
			return
		}
		again, err := DecodeInvite(got.Encode())
		if err != nil || again.ClusterID != got.ClusterID || !bytes.Equal(again.Secret, got.Secret) {
			t.Fatalf("decoded invite does not round-trip: %v", err)
		}
	})
}

// FuzzLedgerFSM drives the real FSM (the consensus bridge's contract, with the
// ledger behind it) with arbitrary commands: Apply never panics (rule S4).
func FuzzLedgerFSM(f *testing.F) {
	cmd, _ := generations.EncodeCommand(generations.NewSetAddrs("x", nil, time.Unix(1, 0)))
	f.Add(cmd)
	f.Add([]byte{0, 1, 2})
	f.Fuzz(func(t *testing.T, data []byte) {
		sm := &ledgerSM{l: generations.New()}
		snap, _ := sm.Snapshot()
		if _, err := sm.Apply(1, data); err != nil {
			after, _ := sm.Snapshot()
			if !bytes.Equal(snap, after) {
				t.Fatal("a refused command changed the ledger")
			}
		}
	})
}

func FuzzDecodeAnnouncement(f *testing.F) {
	good, _ := proto.Marshal(&pb.GenerationAnnouncement{Version: 1, ClusterId: "c", Generation: 3, State: "open"})
	f.Add(good)
	f.Add([]byte{0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := DecodeAnnouncement(data, "c")
		if err == nil && (a.GetVersion() != 1 || a.GetClusterId() != "c") {
			t.Fatalf("accepted %v", a)
		}
	})
}

// The leader's answer to a command that opened a generation crosses the
// forward protocol; whatever bytes arrive, decodeOpened only accepts a
// generation within bounds, and what it accepts round-trips.
func FuzzDecodeOpened(f *testing.F) {
	pid, err := peer.Decode("12D3KooWBmSBRFJGic4fo6JFrorBF89F9BL9kFpAfpZbg9pAqkpg")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(encodeOpened(generations.Generation{Number: 3, Threshold: 2, Members: []peer.ID{pid, pid}}))
	f.Add(encodeOpened(generations.Generation{}))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, ok := decodeOpened(data)
		if !ok {
			return
		}
		if r.Number == 0 || r.Threshold < 1 || r.Threshold > len(r.Members) || len(r.Members) > maxJoinMembers {
			t.Fatalf("accepted %+v", r)
		}
		back, ok := decodeOpened(encodeOpened(r.generation()))
		if !ok || back.Number != r.Number || back.Threshold != r.Threshold || !slices.Equal(back.Members, r.Members) {
			t.Fatalf("round trip of %+v gave %+v", r, back)
		}
	})
}
