// Package pb holds the wire messages of the forward protocol.
package pb

// Regenerate with: PATH=$PATH:/root/go/bin go generate ./consensus/pb

//go:generate protoc --proto_path=. --go_out=. --go_opt=paths=source_relative forward.proto
