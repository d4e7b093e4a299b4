// A small shop of Go services for the trace tests, built offline from
// Debian's Go sources: Gin for HTTP, net/http for calls between services,
// database/sql with go-sql-driver/mysql for MariaDB.
//
//	go_shop price PORT
//	go_shop front PORT PRICE_URL MYSQL_DSN
package main

import (
	"database/sql"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
	"sync"

	"github.com/gin-gonic/gin"
	_ "github.com/go-sql-driver/mysql"
)

func main() {
	if len(os.Args) < 3 {
		log.Fatal("usage: go_shop price PORT | go_shop front PORT PRICE_URL MYSQL_DSN")
	}
	role, port := os.Args[1], os.Args[2]
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
