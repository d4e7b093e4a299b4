// grpc-go-server: a gRPC-Go server for the tracer integration tests.
//
// It registers demo.Greeter without generated code: a hand-written
// ServiceDesc whose handlers work on raw message bytes, and a codec named
// "proto" that passes the bytes through unchanged, so any client that frames
// its messages (Python's generic stubs, h2load with a prepared body) can
// call it.
//
//	demo.Greeter/SayHello  answers "hello " followed by the request message.
//	demo.Greeter/Fail      answers with the status named by the request
//	                       message (e.g. "NOT_FOUND", "INTERNAL").
//
// Usage: grpc-go-server PORT (listens on 127.0.0.1:PORT and prints
// "listening 127.0.0.1:PORT" once it accepts connections).
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"
)

// rawCodec hands message bytes to the handlers as they are on the wire.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) {
	switch m := v.(type) {
	case []byte:
		return m, nil
	case *[]byte:
		return *m, nil
	default:
		return nil, fmt.Errorf("raw codec cannot marshal %T", v)
	}
}

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	m, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("raw codec cannot unmarshal into %T", v)
	}
	*m = append((*m)[:0], data...)
	return nil
}

// Name replaces the default codec for content-type application/grpc.
func (rawCodec) Name() string { return "proto" }

// greeter is the handler type the service description is checked against.
type greeter interface{}

type server struct{}

func sayHello(srv interface{}, ctx context.Context, dec func(interface{}) error, _ grpc.UnaryServerInterceptor) (interface{}, error) {
	var in []byte
	if err := dec(&in); err != nil {
		return nil, err
	}
	return append([]byte("hello "), in...), nil
}

var codeByName = map[string]codes.Code{
	"CANCELLED":           codes.Canceled,
	"UNKNOWN":             codes.Unknown,
	"INVALID_ARGUMENT":    codes.InvalidArgument,
	"DEADLINE_EXCEEDED":   codes.DeadlineExceeded,
	"NOT_FOUND":           codes.NotFound,
	"ALREADY_EXISTS":      codes.AlreadyExists,
	"PERMISSION_DENIED":   codes.PermissionDenied,
	"RESOURCE_EXHAUSTED":  codes.ResourceExhausted,
	"FAILED_PRECONDITION": codes.FailedPrecondition,
	"ABORTED":             codes.Aborted,
	"OUT_OF_RANGE":        codes.OutOfRange,
	"UNIMPLEMENTED":       codes.Unimplemented,
	"INTERNAL":            codes.Internal,
	"UNAVAILABLE":         codes.Unavailable,
	"DATA_LOSS":           codes.DataLoss,
	"UNAUTHENTICATED":     codes.Unauthenticated,
}

func fail(srv interface{}, ctx context.Context, dec func(interface{}) error, _ grpc.UnaryServerInterceptor) (interface{}, error) {
	var in []byte
	if err := dec(&in); err != nil {
		return nil, err
	}
	code, ok := codeByName[string(in)]
	if !ok {
		code = codes.InvalidArgument
	}
	return nil, status.Errorf(code, "failing with %s as asked", string(in))
}

var greeterDesc = grpc.ServiceDesc{
	ServiceName: "demo.Greeter",
	HandlerType: (*greeter)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "SayHello", Handler: sayHello},
		{MethodName: "Fail", Handler: fail},
	},
	Streams:  []grpc.StreamDesc{},
	Metadata: "demo.proto",
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: grpc-go-server PORT")
		os.Exit(2)
	}
	encoding.RegisterCodec(rawCodec{})
	addr := "127.0.0.1:" + os.Args[1]
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(1)
	}
	s := grpc.NewServer()
	s.RegisterService(&greeterDesc, &server{})
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		s.Stop()
	}()
	fmt.Println("listening", addr)
	if err := s.Serve(lis); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
}
