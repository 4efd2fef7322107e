// A Go service calling llm-router through stubs generated from its proto with Debian's
// protoc-gen-go and protoc-gen-go-grpc (see build.sh, and README.md beside it).
//
// It makes a streamed call with a tool and assembles the tool call from its pieces, then makes
// a call that fails and reads the AttemptLog from the status details. Against the built-in
// default config:
//
//	./client 127.0.0.1:50051
//
// Against a router with TLS (`server.tls`) and callers: -ca the CA that signed the server's
// certificate, -cert/-key a client certificate for mTLS, and the API key, if any, from
// LLMROUTER_API_KEY (never the command line, where other users of the machine can read it).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"sort"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	pb "llmrouter.example/client/gen/llmrouter/v1"
)

type call struct{ id, name, arguments string }

// streamedToolCall offers one tool; the pieces of its call are assembled by index, as with
// OpenAI's. The tool's JSON Schema is a google.protobuf.Struct built from plain JSON.
func streamedToolCall(ctx context.Context, client pb.RouterServiceClient) {
	params, err := structpb.NewStruct(map[string]interface{}{
		"type":       "object",
		"properties": map[string]interface{}{"city": map[string]interface{}{"type": "string"}},
		"required":   []interface{}{"city"},
	})
	if err != nil {
		log.Fatal(err)
	}
	stream, err := client.StreamComplete(ctx, &pb.StreamCompleteRequest{
		Model:      "chat",
		Messages:   []*pb.ChatMessage{{Role: pb.Role_ROLE_USER, Content: "What's the weather in Paris?"}},
		Tools:      []*pb.Tool{{Name: "get_weather", Description: "Current weather for a city", Parameters: params}},
		ToolChoice: &pb.ToolChoice{Choice: &pb.ToolChoice_Function{Function: "get_weather"}},
	})
	if err != nil {
		log.Fatal(err)
	}
	calls := map[uint32]*call{}
	finish := pb.FinishReason_FINISH_REASON_UNSPECIFIED
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			log.Fatal(err)
		}
		for _, piece := range msg.ToolCalls {
			c, ok := calls[piece.Index]
			if !ok {
				c = &call{}
				calls[piece.Index] = c
			}
			if piece.Id != "" {
				c.id = piece.Id
			}
			if piece.Name != "" {
				c.name = piece.Name
			}
			c.arguments += piece.Arguments
		}
		if msg.FinishReason != pb.FinishReason_FINISH_REASON_UNSPECIFIED {
			finish = msg.FinishReason
		}
	}
	indexes := make([]int, 0, len(calls))
	for i := range calls {
		indexes = append(indexes, int(i))
	}
	sort.Ints(indexes)
	for _, i := range indexes {
		c := calls[uint32(i)]
		var args interface{}
		if err := json.Unmarshal([]byte(c.arguments), &args); err != nil {
			log.Fatalf("tool call %d: arguments are not JSON: %v", i, err)
		}
		compact, _ := json.Marshal(args) // map keys come out sorted
		fmt.Printf("tool call %d: %s %s\n", i, c.name, compact)
	}
	fmt.Printf("finish: %s\n", finish)
}

// failedCall cannot answer in time; the status details say what every attempt did.
func failedCall(ctx context.Context, client pb.RouterServiceClient) {
	_, err := client.Complete(ctx, &pb.CompleteRequest{
		Model:       "story",
		Messages:    []*pb.ChatMessage{{Role: pb.Role_ROLE_USER, Content: "Tell me a story."}},
		MockTimeout: true,
		Timeout:     durationpb.New(time.Second),
	})
	if err == nil {
		log.Fatal("the call should have failed")
	}
	st := status.Convert(err)
	for _, detail := range st.Details() {
		if attempts, ok := detail.(*pb.AttemptLog); ok {
			for _, a := range attempts.Attempts {
				fmt.Printf("attempt: %s %s\n", a.Deployment, a.Outcome)
			}
		}
	}
	fmt.Printf("failed: %s\n", codeName(st.Code().String()))
}

// codeName is a code as the other clients print it: DEADLINE_EXCEEDED, not DeadlineExceeded.
func codeName(camel string) string {
	out := make([]byte, 0, len(camel)+4)
	for i := 0; i < len(camel); i++ {
		c := camel[i]
		if c >= 'A' && c <= 'Z' && i > 0 {
			out = append(out, '_')
		}
		if c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		out = append(out, c)
	}
	return string(out)
}

// bearer sends the API key with every call, over TLS only.
type bearer string

func (k bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(k)}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }

func main() {
	ca := flag.String("ca", "", "PEM CA bundle that signed the server's certificate")
	cert := flag.String("cert", "", "PEM client certificate, for mTLS")
	key := flag.String("key", "", "PEM client key, for mTLS")
	serverName := flag.String("server-name", "", "the name the server's certificate is for")
	flag.Parse()
	address := "127.0.0.1:50051"
	if flag.NArg() > 0 {
		address = flag.Arg(0)
	}
	apiKey := os.Getenv("LLMROUTER_API_KEY")

	opts := []grpc.DialOption{grpc.WithBlock()}
	if *ca == "" {
		if apiKey != "" {
			log.Fatal("an API key goes over TLS only: give -ca")
		}
		opts = append(opts, grpc.WithInsecure())
	} else {
		roots := x509.NewCertPool()
		pem, err := os.ReadFile(*ca)
		if err != nil || !roots.AppendCertsFromPEM(pem) {
			log.Fatalf("cannot read the CA bundle %s: %v", *ca, err)
		}
		config := &tls.Config{RootCAs: roots, ServerName: *serverName, MinVersion: tls.VersionTLS12}
		if *cert != "" {
			pair, err := tls.LoadX509KeyPair(*cert, *key)
			if err != nil {
				log.Fatalf("cannot read the client certificate: %v", err)
			}
			config.Certificates = []tls.Certificate{pair}
		}
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(config)))
		if apiKey != "" {
			opts = append(opts, grpc.WithPerRPCCredentials(bearer(apiKey)))
		}
	}
	dial, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(dial, address, opts...)
	if err != nil {
		log.Fatalf("cannot connect to %s: %v", address, err)
	}
	defer conn.Close()
	client := pb.NewRouterServiceClient(conn)

	ctx, done := context.WithTimeout(context.Background(), 10*time.Second)
	defer done()
	streamedToolCall(ctx, client)
	failedCall(ctx, client)
}
