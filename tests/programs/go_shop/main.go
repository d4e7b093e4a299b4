// A small shop of Go services for the trace tests, built offline from
// Debian's Go sources: Gin for HTTP, net/http for calls between services,
// database/sql with go-sql-driver/mysql for MariaDB, redigo for Redis.
//
//	go_shop price PORT
//	go_shop front PORT PRICE_URL MYSQL_DSN [INVENTORY_ADDR]
//	go_shop inventory PORT MYSQL_DSN [REDIS_ADDR]   (gRPC: /shop.Inventory/Check, Watch)
package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"

	"github.com/gin-gonic/gin"
	_ "github.com/go-sql-driver/mysql"
	"github.com/gomodule/redigo/redis"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
)

// rawCodec passes message bytes through unchanged, registered under the
// name of the default codec: services without generated code.
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

func (rawCodec) Name() string { return "proto" }

type inventory interface{}

// serveInventory answers /shop.Inventory/Check with the item number it is
// sent, after one query on the handler's goroutine (and, given a Redis
// address, one INCR of the item's counter after it).
func serveInventory(port, dsn, redisAddr string) {
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		log.Fatal(err)
	}
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(16)
	var pool *redis.Pool
	if redisAddr != "" {
		pool = &redis.Pool{
			MaxIdle:   16,
			MaxActive: 16,
			Wait:      true,
			Dial:      func() (redis.Conn, error) { return redis.Dial("tcp", redisAddr) },
		}
	}
	lookup := func(n int) error {
		var v int
		if err := db.QueryRow("SELECT ?", n).Scan(&v); err != nil || v != n {
			return fmt.Errorf("query: %v", err)
		}
		if pool == nil {
			return nil
		}
		c := pool.Get()
		defer c.Close()
		_, err := redis.Int(c.Do("INCR", fmt.Sprintf("stock:%d", n)))
		return err
	}
	check := func(srv interface{}, ctx context.Context, dec func(interface{}) error, _ grpc.UnaryServerInterceptor) (interface{}, error) {
		var in []byte
		if err := dec(&in); err != nil {
			return nil, err
		}
		n, _ := strconv.Atoi(string(in))
		if err := lookup(n); err != nil {
			return nil, err
		}
		return []byte(fmt.Sprintf("in stock %d", n)), nil
	}
	// /shop.Inventory/Watch, server streaming: the lookup of the item
	// number it is sent, then three messages.
	watch := func(srv interface{}, stream grpc.ServerStream) error {
		var in []byte
		if err := stream.RecvMsg(&in); err != nil {
			return err
		}
		n, _ := strconv.Atoi(string(in))
		if err := lookup(n); err != nil {
			return err
		}
		for i := 0; i < 3; i++ {
			if err := stream.SendMsg([]byte(fmt.Sprintf("stock %d: %d", n, i))); err != nil {
				return err
			}
		}
		return nil
	}
	desc := grpc.ServiceDesc{
		ServiceName: "shop.Inventory",
		HandlerType: (*inventory)(nil),
		Methods:     []grpc.MethodDesc{{MethodName: "Check", Handler: check}},
		Streams:     []grpc.StreamDesc{{StreamName: "Watch", Handler: watch, ServerStreams: true}},
		Metadata:    "shop.proto",
	}
	encoding.RegisterCodec(rawCodec{})
	lis, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		log.Fatal(err)
	}
	s := grpc.NewServer()
	s.RegisterService(&desc, nil)
	log.Printf("listening on %s", port)
	log.Fatal(s.Serve(lis))
}

func main() {
	if len(os.Args) < 3 {
		log.Fatal("usage: go_shop price PORT | go_shop front PORT PRICE_URL MYSQL_DSN")
	}
	role, port := os.Args[1], os.Args[2]
	if role == "inventory" {
		redisAddr := ""
		if len(os.Args) > 4 {
			redisAddr = os.Args[4]
		}
		serveInventory(port, os.Args[3], redisAddr)
		return
	}
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	switch role {
	case "price":
		r.GET("/price/:n", func(c *gin.Context) {
			c.String(http.StatusOK, "price %s\n", c.Param("n"))
		})
	case "front":
		price, dsn := os.Args[3], os.Args[4]
		db, err := sql.Open("mysql", dsn)
		if err != nil {
			log.Fatal(err)
		}
		db.SetMaxOpenConns(16)
		db.SetMaxIdleConns(16)
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
		var stock *grpc.ClientConn
		if len(os.Args) > 5 {
			encoding.RegisterCodec(rawCodec{})
			stock, err = grpc.Dial(os.Args[5], grpc.WithInsecure())
			if err != nil {
				log.Fatal(err)
			}
		}
		get := func(n int) (string, error) {
			resp, err := client.Get(fmt.Sprintf("%s/price/%d", price, n))
			if err != nil {
				return "", err
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			return string(body), err
		}
		// One query on the handler's goroutine, then one call to the
		// price service.
		r.GET("/front/:n", func(c *gin.Context) {
			n, _ := strconv.Atoi(c.Param("n"))
			var v int
			if err := db.QueryRow("SELECT ?", n).Scan(&v); err != nil || v != n {
				c.String(http.StatusInternalServerError, "query: %v", err)
				return
			}
			body, err := get(n)
			if err != nil {
				c.String(http.StatusBadGateway, "price: %v", err)
				return
			}
			c.String(http.StatusOK, "front %d %s", n, body)
		})
		// One gRPC call to the inventory service.
		r.GET("/stock/:n", func(c *gin.Context) {
			if stock == nil {
				c.String(http.StatusNotFound, "no inventory service")
				return
			}
			var out []byte
			if err := stock.Invoke(c.Request.Context(), "/shop.Inventory/Check", []byte(c.Param("n")), &out); err != nil {
				c.String(http.StatusBadGateway, "inventory: %v", err)
				return
			}
			c.String(http.StatusOK, "%s", out)
		})
		// One server-streaming gRPC call: three messages back.
		r.GET("/watch/:n", func(c *gin.Context) {
			if stock == nil {
				c.String(http.StatusNotFound, "no inventory service")
				return
			}
			desc := &grpc.StreamDesc{StreamName: "Watch", ServerStreams: true}
			st, err := stock.NewStream(c.Request.Context(), desc, "/shop.Inventory/Watch")
			if err == nil {
				err = st.SendMsg([]byte(c.Param("n")))
			}
			if err == nil {
				err = st.CloseSend()
			}
			got := 0
			for err == nil {
				var out []byte
				if err = st.RecvMsg(&out); err == nil {
					got++
				}
			}
			if err != io.EOF || got != 3 {
				c.String(http.StatusBadGateway, "inventory: %v after %d", err, got)
				return
			}
			c.String(http.StatusOK, "watched %s", c.Param("n"))
		})
		// Three calls to the price service, each on its own goroutine.
		r.GET("/fanout/:n", func(c *gin.Context) {
			n, _ := strconv.Atoi(c.Param("n"))
			var wg sync.WaitGroup
			errs := make([]error, 3)
			for i := 0; i < 3; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					_, errs[i] = get(n*10 + i)
				}(i)
			}
			wg.Wait()
			for _, err := range errs {
				if err != nil {
					c.String(http.StatusBadGateway, "price: %v", err)
					return
				}
			}
			c.String(http.StatusOK, "fanout %d", n)
		})
	default:
		log.Fatalf("unknown role %q", role)
	}
	log.Printf("listening on %s", port)
	if err := r.Run("127.0.0.1:" + port); err != nil {
		log.Fatal(err)
	}
}
