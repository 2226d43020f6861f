program e2e
  implicit none
  integer :: n, u
  open(newunit=u, file='e2e-input.txt', status='old', action='read')
  read(u, *) n
  close(u)
  open(newunit=u, file='e2e-fortran.txt', status='replace', action='write')
  write(u, '(a, i0)') 'e2e fortran ', n * 2
  close(u)
  print '(a, i0)', 'e2e fortran ', n * 2
end program e2e
