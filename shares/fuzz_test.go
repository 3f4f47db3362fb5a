package shares

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/shares/pb"
)

// fuzzEnvelope is a valid encoded envelope for seeds.
func fuzzEnvelope(f *testing.F) []byte {
	priv, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	id, _ := peer.IDFromPrivateKey(priv)
	env, err := Seal(priv, Binding{ClusterID: testCluster, Owner: id, Generation: 3, Holder: id, Split: NewSplitID()}, shareOf([]byte("share")), nil)
	if err != nil {
		f.Fatal(err)
	}
	raw, _ := env.MarshalBinary()
	return raw
}

func framed(m proto.Message) []byte {
	var buf bytes.Buffer
	_ = writeDelimited(&buf, m)
	return buf.Bytes()
}

func FuzzDecodeRequest(f *testing.F) {
	env := fuzzEnvelope(f)
	f.Add(framed(pushRequest(testCluster, 3, env)))
	for _, v := range envelopeVariants(f, env) {
		f.Add(framed(pushRequest(testCluster, 3, v)))
	}
	f.Add(framed(fetchRequest(testCluster, 3)))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add([]byte{0x02, 0x08, 0x01})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := decodeRequest(bufio.NewReader(bytes.NewReader(data)))
		if err != nil {
			return
		}
		// A valid request re-encodes to one that decodes to the same thing.
		var m *pb.Request
		if req.op == opPush {
			m = pushRequest(req.clusterID, req.gen, req.envelope)
		} else {
			m = fetchRequest(req.clusterID, req.gen)
		}
		again, err := decodeRequest(bufio.NewReader(bytes.NewReader(framed(m))))
		if err != nil {
			t.Fatalf("re-encoded request does not decode: %v", err)
		}
		if again.op != req.op || again.clusterID != req.clusterID || again.gen != req.gen || !bytes.Equal(again.envelope, req.envelope) {
			t.Fatalf("round trip changed the request: %+v != %+v", again, req)
		}
		// The holder's envelope checks never panic either.
		if req.op == opPush {
			_, _ = ParseEnvelope(req.envelope)
		}
	})
}

func FuzzDecodeResponse(f *testing.F) {
	env := fuzzEnvelope(f)
	f.Add(framed(&pb.Response{Version: 1, ClusterId: testCluster, Code: pb.Response_OK, Envelope: env}))
	f.Add(framed(&pb.Response{Version: 1, ClusterId: testCluster, Code: pb.Response_OK, Digest: make([]byte, 32), ReceiptSignature: make([]byte, 64)}))
	f.Add(framed(&pb.Response{Version: 1, ClusterId: testCluster, Code: pb.Response_NOT_FOUND, Message: "no"}))
	f.Add([]byte{0x80, 0x80, 0x80, 0x80, 0x01})
	f.Fuzz(func(t *testing.T, data []byte) {
		resp, err := decodeResponse(bufio.NewReader(bytes.NewReader(data)))
		if err != nil {
			return
		}
		if resp.GetCode() == pb.Response_CODE_UNSPECIFIED || resp.GetVersion() != WireVersion {
			t.Fatalf("accepted %v", resp)
		}
		if resp.GetCode() != pb.Response_OK {
			_ = remoteError(resp.GetCode(), resp.GetMessage(), peer.ID("x"))
		}
		if len(resp.GetEnvelope()) > 0 {
			_, _ = ParseEnvelope(resp.GetEnvelope())
		}
	})
}

// envelopeVariants returns encodings of raw's envelope with its split
// field and version changed: the seeds that reach the split checks.
func envelopeVariants(f *testing.F, raw []byte) [][]byte {
	var m pb.Envelope
	if err := proto.Unmarshal(raw, &m); err != nil {
		f.Fatal(err)
	}
	var out [][]byte
	for _, change := range []func(m *pb.Envelope){
		func(m *pb.Envelope) { m.Split = nil },                                // no split
		func(m *pb.Envelope) { m.Split = make([]byte, 16) },                   // zero split
		func(m *pb.Envelope) { m.Split = m.Split[:15] },                       // short
		func(m *pb.Envelope) { m.Split = append(bytes.Clone(m.Split), 0xaa) }, // long
		func(m *pb.Envelope) { m.Version = 1; m.Split = nil },                 // a version 1 envelope
		func(m *pb.Envelope) { m.Version = 3 },
	} {
		c := proto.Clone(&m).(*pb.Envelope)
		change(c)
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, b)
	}
	// The split field twice: decodes, but is not canonical.
	out = append(out, append(append(bytes.Clone(raw), 0x42, 16), m.Split...))
	return out
}

func FuzzDecodeEnvelope(f *testing.F) {
	raw := fuzzEnvelope(f)
	f.Add(raw)
	for _, v := range envelopeVariants(f, raw) {
		f.Add(v)
	}
	f.Add([]byte{0x08, 0x01})
	f.Add([]byte{0x08, 0x02, 0x42, 0x10})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		env, err := ParseEnvelope(data)
		if err != nil {
			return
		}
		// Only canonical encodings are accepted: the digest of the bytes is
		// the digest of the envelope.
		again, err := env.MarshalBinary()
		if err != nil || !bytes.Equal(again, data) {
			t.Fatalf("accepted a non-canonical encoding (err %v)", err)
		}
		if err := env.Binding.Validate(); err != nil {
			t.Fatalf("accepted an invalid binding: %v", err)
		}
		if env.Version != EnvelopeVersion || env.Binding.Split == (generations.SplitID{}) {
			t.Fatalf("accepted version %d, split %x", env.Version, env.Binding.Split)
		}
		// The split travels in the encoding.
		var m pb.Envelope
		if err := proto.Unmarshal(data, &m); err != nil || !bytes.Equal(m.GetSplit(), env.Binding.Split[:]) {
			t.Fatalf("split %x, encoded %x (err %v)", env.Binding.Split, m.GetSplit(), err)
		}
	})
}

// FuzzDecodeStoreRecord fuzzes the store's key and value decoders.
func FuzzDecodeStoreRecord(f *testing.F) {
	raw := fuzzEnvelope(f)
	env, _ := ParseEnvelope(raw)
	f.Add(encodeKey(3, env.Binding.Owner), raw)
	for _, v := range envelopeVariants(f, raw) {
		f.Add(encodeKey(3, env.Binding.Owner), v)
	}
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 1}, []byte{0x08, 0x01})
	f.Fuzz(func(t *testing.T, k, v []byte) {
		key, err := decodeKey(k)
		if err != nil {
			return
		}
		if !bytes.Equal(encodeKey(key.Generation, key.Owner), k) {
			t.Fatal("key does not round trip")
		}
		env, err := decodeValue(key, v)
		if err != nil {
			return
		}
		if env.Binding.Generation != key.Generation || env.Binding.Owner != key.Owner {
			t.Fatal("value accepted under the wrong key")
		}
		if env.Binding.Split == (generations.SplitID{}) {
			t.Fatal("value accepted with a zero split")
		}
	})
}
