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
// M rows, K bf16, N cols. A: M x K bf16 row-major (lda = 2K bytes). B: panels of 32 cols, each steps*2KB.
int M=128,K=768,N=2304;
uint8_t *A,*B; float *C;
__attribute__((target("amx-tile,amx-bf16")))
void run(int mode, int kc){
  int steps=K*2/64, panels=N/32;
  long lda=K*2;
  float sums[32*32] __attribute__((aligned(64)));
  for(int p=0;p<panels;p++){
    uint8_t *bp=B+(long)p*steps*2048;
    if(mode==0){
      for(int r=0;r<M;r+=32){
        uint8_t*a0=A+r*lda,*a1=a0+16*lda; uint8_t*b=bp;
        _tile_zero(0);_tile_zero(1);_tile_zero(2);_tile_zero(3);
        for(int t=0;t<steps;t++){
          _tile_loadd(4,a0+t*64,lda);_tile_loadd(5,a1+t*64,lda);
          _tile_loadd(6,b,64);_tile_loadd(7,b+1024,64);
          _tile_dpbf16ps(0,4,6);_tile_dpbf16ps(1,4,7);_tile_dpbf16ps(2,5,6);_tile_dpbf16ps(3,5,7);
          b+=2048;
        }
        _tile_stored(0,sums,128);_tile_stored(1,sums+16,128);_tile_stored(2,sums+512,128);_tile_stored(3,sums+528,128);
      }
    } else if(mode==1){ // all from fixed L1 spot
      for(int r=0;r<M;r+=32){
        _tile_zero(0);_tile_zero(1);_tile_zero(2);_tile_zero(3);
        for(int t=0;t<steps;t++){
          _tile_loadd(4,A,64);_tile_loadd(5,A+1024,64);
          _tile_loadd(6,B,64);_tile_loadd(7,B+1024,64);
          _tile_dpbf16ps(0,4,6);_tile_dpbf16ps(1,4,7);_tile_dpbf16ps(2,5,6);_tile_dpbf16ps(3,5,7);
        }
        _tile_stored(0,sums,128);_tile_stored(1,sums+16,128);_tile_stored(2,sums+512,128);_tile_stored(3,sums+528,128);
      }
    } else if(mode==2){ // k-chunks: for chunk, for row block: load C, steps, store C
      static float Cst[4][32*32] __attribute__((aligned(64)));
      for(int k0=0;k0<steps;k0+=kc){
        int k1=k0+kc<steps?k0+kc:steps;
        for(int r=0,rb=0;r<M;r+=32,rb++){
          uint8_t*a0=A+r*lda,*a1=a0+16*lda; uint8_t*b=bp+(long)k0*2048; float*cs=Cst[rb&3];
          if(k0==0){_tile_zero(0);_tile_zero(1);_tile_zero(2);_tile_zero(3);}
          else {_tile_loadd(0,cs,128);_tile_loadd(1,cs+16,128);_tile_loadd(2,cs+512,128);_tile_loadd(3,cs+528,128);}
          for(int t=k0;t<k1;t++){
            _tile_loadd(4,a0+t*64,lda);_tile_loadd(5,a1+t*64,lda);
            _tile_loadd(6,b,64);_tile_loadd(7,b+1024,64);
            _tile_dpbf16ps(0,4,6);_tile_dpbf16ps(1,4,7);_tile_dpbf16ps(2,5,6);_tile_dpbf16ps(3,5,7);
            b+=2048;
          }
          _tile_stored(0,cs,128);_tile_stored(1,cs+16,128);_tile_stored(2,cs+512,128);_tile_stored(3,cs+528,128);
        }
      }
    } else if(mode==3){ // A from fixed L1, B streaming
      for(int r=0;r<M;r+=32){
        uint8_t*b=bp;
        _tile_zero(0);_tile_zero(1);_tile_zero(2);_tile_zero(3);
        for(int t=0;t<steps;t++){
          _tile_loadd(4,A,64);_tile_loadd(5,A+1024,64);
          _tile_loadd(6,b,64);_tile_loadd(7,b+1024,64);
          _tile_dpbf16ps(0,4,6);_tile_dpbf16ps(1,4,7);_tile_dpbf16ps(2,5,6);_tile_dpbf16ps(3,5,7);
          b+=2048;
        }
        _tile_stored(0,sums,128);_tile_stored(1,sums+16,128);_tile_stored(2,sums+512,128);_tile_stored(3,sums+528,128);
      }
    } else if(mode==4){ // B from L1 fixed, A streaming
      for(int r=0;r<M;r+=32){
        uint8_t*a0=A+r*lda,*a1=a0+16*lda;
        _tile_zero(0);_tile_zero(1);_tile_zero(2);_tile_zero(3);
        for(int t=0;t<steps;t++){
          _tile_loadd(4,a0+t*64,lda);_tile_loadd(5,a1+t*64,lda);
          _tile_loadd(6,B,64);_tile_loadd(7,B+1024,64);
          _tile_dpbf16ps(0,4,6);_tile_dpbf16ps(1,4,7);_tile_dpbf16ps(2,5,6);_tile_dpbf16ps(3,5,7);
        }
        _tile_stored(0,sums,128);_tile_stored(1,sums+16,128);_tile_stored(2,sums+512,128);_tile_stored(3,sums+528,128);
      }
    } else if(mode==5){ // A packed in tile order per row block: [rb][step][32 rows x 64B] contiguous
      for(int r=0;r<M;r+=32){
        uint8_t*a0=A+(long)r*lda; uint8_t*b=bp;
        _tile_zero(0);_tile_zero(1);_tile_zero(2);_tile_zero(3);
        for(int t=0;t<steps;t++){
          _tile_loadd(4,a0+t*2048,64);_tile_loadd(5,a0+t*2048+1024,64);
          _tile_loadd(6,b,64);_tile_loadd(7,b+1024,64);
          _tile_dpbf16ps(0,4,6);_tile_dpbf16ps(1,4,7);_tile_dpbf16ps(2,5,6);_tile_dpbf16ps(3,5,7);
          b+=2048;
        }
        _tile_stored(0,sums,128);_tile_stored(1,sums+16,128);_tile_stored(2,sums+512,128);_tile_stored(3,sums+528,128);
      }
    }
    if(mode==6){ for(int r=0;r<M;r+=32){ _tile_zero(0);_tile_zero(1);_tile_zero(2);_tile_zero(3);
        for(int t=0;t<steps;t++){ _tile_dpbf16ps(0,4,6);_tile_dpbf16ps(1,4,7);_tile_dpbf16ps(2,5,6);_tile_dpbf16ps(3,5,7);}
        _tile_stored(0,sums,128);_tile_stored(1,sums+16,128);_tile_stored(2,sums+512,128);_tile_stored(3,sums+528,128);}}
    if(mode==7){ for(int r=0;r<M;r+=32){ 
        for(int t=0;t<steps;t++){ _tile_dpbf16ps(0,4,6);_tile_dpbf16ps(1,4,7);_tile_dpbf16ps(2,5,6);_tile_dpbf16ps(3,5,7);}
        }}
    if(mode==8||mode==9){
      for(int r=0;r<M;r+=32){
        uint8_t*a0=A+r*lda,*a1=a0+16*lda; uint8_t*b=bp;
        if(mode==9){a0=A;a1=A+1024;}
        long sa=mode==9?64:lda;
        _tile_zero(0);_tile_zero(1);_tile_zero(2);_tile_zero(3);
        for(int t=0;t<steps;t++){
          long ka=mode==9?0:t*64; uint8_t*bb=mode==9?B:b;
          _tile_loadd(4,a0+ka,sa);_tile_loadd(6,bb,64);_tile_dpbf16ps(0,4,6);
          _tile_loadd(7,bb+1024,64);_tile_dpbf16ps(1,4,7);
          _tile_loadd(5,a1+ka,sa);_tile_dpbf16ps(2,5,6);_tile_dpbf16ps(3,5,7);
          b+=2048;
        }
        _tile_stored(0,sums,128);_tile_stored(1,sums+16,128);_tile_stored(2,sums+512,128);_tile_stored(3,sums+528,128);
      }
    }
    if(mode==10||mode==11){
      for(int r=0;r<M;r+=32){
        uint8_t*a0=A+(long)r*lda; uint8_t*b=bp;
        _tile_zero(0);_tile_zero(1);_tile_zero(2);_tile_zero(3);
        for(int t=0;t<steps;t++){
          uint8_t*aa=a0+t*2048;
          if(mode==11 && t+2<steps){ for(int l=0;l<2048;l+=64){_mm_prefetch((char*)aa+4096+l,_MM_HINT_T0);_mm_prefetch((char*)b+4096+l,_MM_HINT_T0);} }
          _tile_loadd(4,aa,64);_tile_loadd(6,b,64);_tile_dpbf16ps(0,4,6);
          _tile_loadd(7,b+1024,64);_tile_dpbf16ps(1,4,7);
          _tile_loadd(5,aa+1024,64);_tile_dpbf16ps(2,5,6);_tile_dpbf16ps(3,5,7);
          b+=2048;
        }
        _tile_stored(0,sums,128);_tile_stored(1,sums+16,128);_tile_stored(2,sums+512,128);_tile_stored(3,sums+528,128);
      }
    }
    if(mode==12){ // kchunk, A packed, interleaved
      static float Cst[8][32*32] __attribute__((aligned(64)));
      for(int k0=0;k0<steps;k0+=kc){
        int k1=k0+kc<steps?k0+kc:steps;
        for(int r=0,rb=0;r<M;r+=32,rb++){
          uint8_t*a0=A+(long)r*lda; uint8_t*b=bp+(long)k0*2048; float*cs=Cst[rb&7];
          if(k0==0){_tile_zero(0);_tile_zero(1);_tile_zero(2);_tile_zero(3);}
          else {_tile_loadd(0,cs,128);_tile_loadd(1,cs+16,128);_tile_loadd(2,cs+512,128);_tile_loadd(3,cs+528,128);}
          for(int t=k0;t<k1;t++){
            uint8_t*aa=a0+t*2048;
            _tile_loadd(4,aa,64);_tile_loadd(6,b,64);_tile_dpbf16ps(0,4,6);
            _tile_loadd(7,b+1024,64);_tile_dpbf16ps(1,4,7);
            _tile_loadd(5,aa+1024,64);_tile_dpbf16ps(2,5,6);_tile_dpbf16ps(3,5,7);
            b+=2048;
          }
          _tile_stored(0,cs,128);_tile_stored(1,cs+16,128);_tile_stored(2,cs+512,128);_tile_stored(3,cs+528,128);
        }
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
  const char*names[]={"current","allL1","kchunk","A-L1","B-L1","Apacked","noload","noload-nostore","interleave","interleaveL1","Apk-il","Apk-il-pf","kc-Apk-il"};
  int modes[]={0,1,5,10,2,12,6};
  double res[16][64]; int R=atoi(getenv("R")?getenv("R"):"10");
  for(int round=0;round<R;round++){
    for(int mi=0;mi<7;mi++){ int mode=modes[mi];
      double best=1e9;
      for(int it=0;it<10;it++){double t=now();run(mode,kc);t=now()-t;if(t<best)best=t;}
      res[mi][round]=fl/best/1e9;
    }
  }
  for(int mi=0;mi<7;mi++){ double*v=res[mi]; 
    for(int a=0;a<R;a++)for(int b=a+1;b<R;b++) if(v[b]<v[a]){double x=v[a];v[a]=v[b];v[b]=x;}
    printf("%-10s med %5.0f max %5.0f\n",names[modes[mi]],v[R/2],v[R-1]); }
  _tile_release();
}
