// A small Gin service for the overhead benchmark: JSON built per request,
// the kind of work a real handler does.
package main

import (
	"net/http"
	"os"
	"strconv"

	"github.com/gin-gonic/gin"
)

type item struct {
	ID    int      `json:"id"`
	Name  string   `json:"name"`
	Price float64  `json:"price"`
	Tags  []string `json:"tags"`
}

func main() {
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.GET("/items/:id", func(c *gin.Context) {
		id, err := strconv.Atoi(c.Param("id"))
		if err != nil {
			c.JSON(http.StatusBadRequest, gin.H{"error": "bad id"})
			return
		}
		items := make([]item, 20)
		for i := range items {
			items[i] = item{ID: id*100 + i, Name: "item-" + strconv.Itoa(i), Price: float64(i) * 1.25, Tags: []string{"a", "b", "c"}}
		}
		c.JSON(http.StatusOK, gin.H{"id": id, "items": items})
	})
	if err := r.Run("127.0.0.1:" + os.Args[1]); err != nil {
		os.Exit(1)
	}
}
