/* A C model of the AMX bf16 tile loop of kernels/src/ops/amx.rs, to see what bounds it on a CPU:
 * the same 32 x 32 blocks (four accumulator tiles, two A and two B tiles a step), with A row-major
 * ("current"), every tile from one L1 spot ("allL1"), A in tile order ("Apacked", what the crate
 * does since 2026-12-06), and no loads at all ("noload": tdpbf16ps alone, the roof), among others.
 *
 *   gcc -O2 -mamx-tile -mamx-bf16 -o /tmp/amx_tile_model tools/amx_tile_model.c
 *   R=15 /tmp/amx_tile_model M K N [KC]     (e.g. 128 768 2304: BERT-base QKV; prints GFLOP/s,
 *                                            median and best of R rounds per variant)
 * Needs Linux and a CPU with AMX-BF16 (it asks the kernel for the tile state).
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
typedef struct { uint8_t palette_id; uint8_t start_row; uint8_t reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; } __attribute__((packed)) tilecfg;
// M rows, K bf16, N cols. A: M x K bf16, row-major (lda = 2K bytes) or in tile order (each
// 32-row block's steps of 32 rows x 64 bytes together). B: panels of 32 cols, each steps*2KB.
int M=128,K=768,N=2304;
uint8_t *A,*B;

// The variants, in the order they print.
enum { CURRENT, ALL_L1, APACKED, APK_IL, KCHUNK, KC_APK_IL, NOLOAD, VARIANTS };
static const char*names[VARIANTS]={"current","allL1","Apacked","Apk-il","kchunk","kc-Apk-il","noload"};

#define ZERO4() do{_tile_zero(0);_tile_zero(1);_tile_zero(2);_tile_zero(3);}while(0)
#define STORE4(s) do{_tile_stored(0,(s),128);_tile_stored(1,(s)+16,128);_tile_stored(2,(s)+512,128);_tile_stored(3,(s)+528,128);}while(0)
#define LOAD4(s) do{_tile_loadd(0,(s),128);_tile_loadd(1,(s)+16,128);_tile_loadd(2,(s)+512,128);_tile_loadd(3,(s)+528,128);}while(0)
// One step: A tiles at a0, a1 (row stride sa), B tiles at b, b+1024; loads first, or interleaved
// with the products (il).
#define STEP(a0,a1,sa,b,il) do{ if(il){ \
    _tile_loadd(4,(a0),(sa));_tile_loadd(6,(b),64);_tile_dpbf16ps(0,4,6); \
    _tile_loadd(7,(b)+1024,64);_tile_dpbf16ps(1,4,7); \
    _tile_loadd(5,(a1),(sa));_tile_dpbf16ps(2,5,6);_tile_dpbf16ps(3,5,7); \
  } else { \
    _tile_loadd(4,(a0),(sa));_tile_loadd(5,(a1),(sa)); \
    _tile_loadd(6,(b),64);_tile_loadd(7,(b)+1024,64); \
    _tile_dpbf16ps(0,4,6);_tile_dpbf16ps(1,4,7);_tile_dpbf16ps(2,5,6);_tile_dpbf16ps(3,5,7); \
  } }while(0)

// Steps t0..t1 of the 32-row block at row r against the panel at bp: row-major A or in tile order
// (packed), every tile from one L1 spot (fixed), or no loads at all (noload).
__attribute__((target("amx-tile,amx-bf16")))
static inline void steps_of(int r, uint8_t*bp, int t0, int t1, int packed, int il, int fixed, int noload){
  long lda=K*2;
  for(int t=t0;t<t1;t++){
    uint8_t*b=fixed?B:bp+(long)t*2048;
    if(noload){_tile_dpbf16ps(0,4,6);_tile_dpbf16ps(1,4,7);_tile_dpbf16ps(2,5,6);_tile_dpbf16ps(3,5,7);}
    else if(fixed) STEP(A,A+1024,64,b,il);
    else if(packed){uint8_t*aa=A+(long)r*lda+(long)t*2048; STEP(aa,aa+1024,64,b,il);}
    else {uint8_t*a0=A+(long)r*lda+t*64; STEP(a0,a0+16*lda,lda,b,il);}
  }
}

__attribute__((target("amx-tile,amx-bf16")))
void run(int v, int kc){
  int steps=K*2/64, panels=N/32;
  int packed=v==APACKED||v==APK_IL||v==KC_APK_IL, il=v==APK_IL||v==KC_APK_IL;
  float sums[32*32] __attribute__((aligned(64)));
  static float Cst[8][32*32] __attribute__((aligned(64)));
  for(int p=0;p<panels;p++){
    uint8_t *bp=B+(long)p*steps*2048;
    if(v==KCHUNK||v==KC_APK_IL){ // k-chunks: for chunk, for row block: load C, steps, store C
      int keep=v==KCHUNK?4:8;
      for(int k0=0;k0<steps;k0+=kc){
        int k1=k0+kc<steps?k0+kc:steps;
        for(int r=0,rb=0;r<M;r+=32,rb++){
          float*cs=Cst[rb%keep];
          if(k0==0) ZERO4(); else LOAD4(cs);
          steps_of(r,bp,k0,k1,packed,il,0,0);
          STORE4(cs);
        }
      }
    } else {
      for(int r=0;r<M;r+=32){
        ZERO4();
        steps_of(r,bp,0,steps,packed,il,v==ALL_L1,v==NOLOAD);
        STORE4(sums);
      }
    }
    if(sums[0]==1234.5f) printf("x");
  }
}
int main(int argc,char**argv){
  if(argc>3){M=atoi(argv[1]);K=atoi(argv[2]);N=atoi(argv[3]);}
  int kc=argc>4?atoi(argv[4]):8;
  syscall(SYS_arch_prctl, 0x1023, 18);
  tilecfg cfg; memset(&cfg,0,sizeof cfg); cfg.palette_id=1;
  for(int i=0;i<8;i++){cfg.colsb[i]=64; cfg.rows[i]=16;}
  A=aligned_alloc(64,(size_t)M*K*2+4096); B=aligned_alloc(64,(size_t)K*N*2+4096);
  for(long i=0;i<(long)M*K;i++) ((uint16_t*)A)[i]=0x3f80+(i%7);
  for(long i=0;i<(long)K*N;i++) ((uint16_t*)B)[i]=0x3f80+(i%5);
  _tile_loadconfig(&cfg);
  double fl=2.0*M*K*N;
  double res[VARIANTS][64]; int R=atoi(getenv("R")?getenv("R"):"10");
  if(R<1||R>64){fprintf(stderr,"R must be 1..64, got %d\n",R);return 2;}
  for(int round=0;round<R;round++){
    for(int v=0;v<VARIANTS;v++){
      double best=1e9;
      for(int it=0;it<10;it++){double t=now();run(v,kc);t=now()-t;if(t<best)best=t;}
      res[v][round]=fl/best/1e9;
    }
  }
  for(int v=0;v<VARIANTS;v++){ double*x=res[v];
    for(int a=0;a<R;a++)for(int b=a+1;b<R;b++) if(x[b]<x[a]){double y=x[a];x[a]=x[b];x[b]=y;}
    printf("%-10s med %5.0f max %5.0f\n",names[v],x[R/2],x[R-1]); }
  _tile_release();
}
