# PyTorch cross-check of swav-rs's demo recipe: the same SwAV step, model and
# schedule as `configs/demo.toml`, written independently in PyTorch, trained on Shapes10
# exported as an image folder, with the same kNN monitor. Used to tell a bug in our step from
# a recipe that does not learn (docs/results.md).
#
#   cargo run -p swav-data --example shapes10_export -- /tmp/s10 2000 1000 1
#   python scripts/torch_swav_demo.py --data /tmp/s10 --dim 32 --k 256 --freeze 100000 \
#       --jitter 1.0 --gray 0.5
#
# Options mirror the config: --k (prototypes), --dim (feat_dim), --eps, --lr, --freeze
# (freeze_prototypes_niters), --queue/--qstart, --small (number of 16-px crops), --jitter
# (colour-jitter strength), --gray (grayscale p), --seed. TH=n sets torch's threads (2).
# PyTorch cross-check of the demo recipe on an exported image folder.
import sys, math, time, argparse, os
import torch, torch.nn as nn, torch.nn.functional as F
import torchvision.transforms as T
from torchvision.datasets import ImageFolder
p = argparse.ArgumentParser()
p.add_argument('--data', default='/tmp/s10'); p.add_argument('--epochs', type=int, default=8)
p.add_argument('--width', type=int, default=8); p.add_argument('--lr', type=float, default=0.1)
p.add_argument('--k', type=int, default=30); p.add_argument('--small', type=int, default=2)
p.add_argument('--jitter', type=float, default=0.5); p.add_argument('--gray', type=float, default=0.2)
p.add_argument('--minscale', type=float, default=0.25)
p.add_argument('--bs', type=int, default=64); p.add_argument('--eps', type=float, default=0.05)
p.add_argument('--seed', type=int, default=0); p.add_argument('--queue', type=int, default=0); p.add_argument('--qstart', type=int, default=1); p.add_argument('--freeze', type=int, default=100); p.add_argument('--dim', type=int, default=64)
a = p.parse_args()
torch.manual_seed(a.seed); torch.set_num_threads(int(os.environ.get('TH','2')))
mean, std = (0.4914,0.4822,0.4465), (0.247,0.243,0.261)
def cj(s): return T.RandomApply([T.ColorJitter(0.8*s,0.8*s,0.8*s,0.2*s)], p=0.8)
def aug(size, lo, hi): return T.Compose([T.RandomResizedCrop(size, scale=(lo,hi)), T.RandomHorizontalFlip(), cj(a.jitter), T.RandomGrayscale(a.gray), T.ToTensor(), T.Normalize(mean,std)])
class MC:
    def __init__(s): s.t=[aug(32,a.minscale,1.0)]*2+[aug(16,0.15,0.4)]*a.small
    def __call__(s,x): return [t(x) for t in s.t]
train = ImageFolder(os.path.join(a.data,'train'), MC())
dl = torch.utils.data.DataLoader(train, batch_size=a.bs, shuffle=True, drop_last=True, num_workers=0)
ev = T.Compose([T.ToTensor(), T.Normalize(mean,std)])
def block(cin, cout, stride):
    return Basic(cin, cout, stride)
class Basic(nn.Module):
    def __init__(s, cin, cout, stride):
        super().__init__(); s.c1=nn.Conv2d(cin,cout,3,stride,1,bias=False); s.b1=nn.BatchNorm2d(cout)
        s.c2=nn.Conv2d(cout,cout,3,1,1,bias=False); s.b2=nn.BatchNorm2d(cout)
        s.sc=None if stride==1 and cin==cout else nn.Sequential(nn.Conv2d(cin,cout,1,stride,bias=False), nn.BatchNorm2d(cout))
    def forward(s,x):
        o=F.relu(s.b1(s.c1(x))); o=s.b2(s.c2(o)); return F.relu(o+(x if s.sc is None else s.sc(x)))
class Net(nn.Module):
    def __init__(s,w):
        super().__init__(); s.stem=nn.Sequential(nn.Conv2d(3,w,3,1,1,bias=False), nn.BatchNorm2d(w), nn.ReLU())
        L=[]; cin=w
        for i,m in enumerate([1,2,4,8]):
            for j in range(2): L.append(Basic(cin,w*m,2 if (j==0 and i>0) else 1)); cin=w*m
        s.layers=nn.Sequential(*L); s.dim=cin
        for mm in s.modules():
            if isinstance(mm, nn.Conv2d): nn.init.kaiming_normal_(mm.weight, mode='fan_out', nonlinearity='relu')
    def forward(s,x): return F.adaptive_avg_pool2d(s.layers(s.stem(x)),1).flatten(1)
net = Net(a.width)
head = nn.Sequential(nn.Linear(net.dim,256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256,a.dim))
protos = nn.Linear(a.dim, a.k, bias=False)
params = list(net.parameters())+list(head.parameters())+list(protos.parameters())
opt = torch.optim.SGD(params, lr=a.lr, momentum=0.9, weight_decay=5e-4)
@torch.no_grad()
def sinkhorn(out):
    Q = torch.exp(out / a.eps).t(); B=Q.shape[1]; K=Q.shape[0]; Q/=Q.sum()
    for _ in range(3):
        Q/=Q.sum(1,keepdim=True); Q/=K; Q/=Q.sum(0,keepdim=True); Q/=B
    return (Q*B).t()
@torch.no_grad()
def feats(ds):
    net.eval(); X=[];Y=[]
    for i in range(0,len(ds),256):
        xs=[ds[j][0] for j in range(i,min(i+256,len(ds)))]; ys=[ds[j][1] for j in range(i,min(i+256,len(ds)))]
        X.append(net(torch.stack(xs))); Y+=ys
    net.train(); return F.normalize(torch.cat(X),dim=1), torch.tensor(Y)
trk = ImageFolder(os.path.join(a.data,'train'), ev); tek = ImageFolder(os.path.join(a.data,'test'), ev)
def knn():
    xtr,ytr=feats(trk); xte,yte=feats(tek); s=xte@xtr.t(); w,i=s.topk(20,dim=1); w=(w/0.07).exp()
    oh=torch.zeros(len(yte),10).scatter_add_(1, ytr[i], w); return (oh.argmax(1)==yte).float().mean().item()*100
print(f'random-init kNN {knn():.1f}', flush=True)
its = a.epochs*len(dl); it=0; t0=time.time()
warm = len(dl)
queue=None
for ep in range(a.epochs):
    tot=0
    if a.queue and ep>=a.qstart and queue is None: queue=torch.zeros(2,a.queue,a.dim)
    for crops,_ in dl:
        lr = a.lr*it/warm if it<warm else 0.001+0.5*(a.lr-0.001)*(1+math.cos(math.pi*(it-warm)/(its-warm)))
        for g in opt.param_groups: g['lr']=lr
        with torch.no_grad(): protos.weight.copy_(F.normalize(protos.weight,dim=1))
        e1=net(torch.cat(crops[:2])); e=[e1]
        if a.small: e.append(net(torch.cat(crops[2:])))
        z=F.normalize(head(torch.cat(e)),dim=1); out=protos(z); B=a.bs; n=2+a.small
        loss=0; use_q = queue is not None and bool((queue[-1,-1]!=0).all())
        for ci in [0,1]:
            o=out[ci*B:(ci+1)*B].detach()
            if queue is not None:
                with torch.no_grad():
                    if use_q: o=torch.cat((queue[ci]@protos.weight.t(), o))
                    queue[ci,B:]=queue[ci,:-B].clone(); queue[ci,:B]=z[ci*B:(ci+1)*B].detach()
            q=sinkhorn(o)[-B:]
            sub=0
            for v in range(n):
                if v==ci: continue
                sub -= (q*F.log_softmax(out[v*B:(v+1)*B]/0.1,dim=1)).sum(1).mean()
            loss += sub/(n-1)
        loss/=2
        opt.zero_grad(); loss.backward()
        if it<a.freeze: protos.weight.grad=None
        opt.step(); it+=1; tot+=loss.item()
    print(f'ep {ep} loss {tot/len(dl):.3f} lnK {math.log(a.k):.3f} t {time.time()-t0:.0f}s' + (f' kNN {knn():.1f}' if ep%2==1 else ''), flush=True)
